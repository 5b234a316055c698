"""Admission: many agents at once get answers or a clear "come back", never a wedged registry.

Five hundred agents checking for updates at once used to leave every thread
waiting for a database connection held by requests that waited for a thread
(docs/security.md). These cases put a few hundred concurrent update checks on
a real registry, on both databases, and look at every answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import httpx
import pytest

from registry.api.admission import Admission
from registry.errors import BusyError
from tests.registry.conftest import RunningRegistry, serve, write_devices

AGENTS = 300


def test_a_request_waits_its_turn_and_one_that_waits_too_long_is_told_to_come_back() -> None:
    admission = Admission(limit=1, wait_s=0.2)
    order: list[str] = []

    async def hold(name: str, seconds: float) -> None:
        async with admission.turn():
            order.append(name)
            await anyio.sleep(seconds)

    async def main() -> BusyError:
        async with anyio.create_task_group() as group:
            group.start_soon(hold, "first", 0.1)
            await anyio.sleep(0.01)
            group.start_soon(hold, "second", 0.5)  # waits 0.09 s: admitted
            await anyio.sleep(0.2)
            assert admission.in_use == 1
            with pytest.raises(BusyError) as refused:
                await hold("third", 0)  # waits 0.2 s behind "second": refused
        return refused.value

    refused = anyio.run(main)
    assert order == ["first", "second"]
    assert "busy (1 requests at once" in str(refused) and "retry" in str(refused)
    assert refused.retry_after_s >= 1
    assert admission.in_use == 0 and admission.waiting == 0


def _agents(registry: RunningRegistry, n: int) -> list[tuple[str, str]]:
    return write_devices(registry.context.sessions, n)


async def _checks(url: str, agents: list[tuple[str, str]]) -> list[httpx.Response | Exception]:
    """Every agent's update check (desired version, signed time, timestamp), all at once."""
    # Idle connections are dropped well before uvicorn's 5 s keep-alive ends, or a
    # request may go out on a connection the server is closing (a ReadError).
    limits = httpx.Limits(
        max_connections=len(agents), max_keepalive_connections=len(agents), keepalive_expiry=1.0
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def check(device: str, token: str) -> list[httpx.Response | Exception]:
            headers = {"Authorization": f"Bearer {token}"}
            answers: list[httpx.Response | Exception] = []
            for path in (
                f"/api/v1/devices/{device}/desired",
                f"/tuf/time?nonce={'n' * 32}",
                "/tuf/metadata/timestamp.json",
            ):
                try:
                    answers.append(await client.get(path, headers=headers))
                except httpx.HTTPError as e:  # a hang shows up here, as a timeout
                    answers.append(e)
            return answers

        nested = await asyncio.gather(*(check(d, t) for d, t in agents))
    return [answer for answers in nested for answer in answers]


def _tally(answers: list[httpx.Response | Exception]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for answer in answers:
        key = type(answer).__name__ if isinstance(answer, Exception) else str(answer.status_code)
        tally[key] = tally.get(key, 0) + 1
    return tally


def test_hundreds_of_update_checks_at_once_are_all_answered(registry: RunningRegistry) -> None:
    agents = _agents(registry, AGENTS)

    answers = asyncio.run(_checks(registry.url, agents))

    # Every check answered, none with an error of ours; busy answers are allowed
    # (503 + Retry-After), a hang or a 500 is not.
    tally = _tally(answers)
    assert set(tally) <= {"200", "503"}, tally
    assert tally.get("200", 0) >= len(answers) // 2, tally
    device, token = agents[0]
    with registry.client(token) as client:
        assert client.get(f"/api/v1/devices/{device}/desired").status_code == 200
    assert registry.admin.get("/api/v1/devices", params={"limit": 1}).status_code == 200


def test_a_registry_at_its_limit_says_busy_with_retry_after_and_recovers(
    tmp_path: Path, database_url: str
) -> None:
    with serve(tmp_path, database_url, max_db_requests=1, request_wait_s=0.01) as registry:
        agents = _agents(registry, 100)

        answers = asyncio.run(_checks(registry.url, agents))

        tally = _tally(answers)
        assert set(tally) <= {"200", "503"}, tally
        assert tally.get("503", 0) > 0, tally  # one at a time, 10 ms of patience
        busy = next(a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503)
        assert busy.headers["Retry-After"].isdigit()
        assert busy.headers["content-type"] == "application/problem+json"
        assert "the registry is busy" in busy.json()["detail"]
        # What needs no database (the TUF metadata) is never turned away.
        metadata = [
            a
            for a in answers
            if isinstance(a, httpx.Response) and a.url.path.endswith("timestamp.json")
        ]
        assert {a.status_code for a in metadata} == {200}
        device, token = agents[0]
        with registry.client(token) as client:
            assert client.get(f"/api/v1/devices/{device}/desired").status_code == 200
