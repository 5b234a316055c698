"""A busy registry (503 or 429 with Retry-After) is waited out, by the poll and by installs.

Real HTTP servers on free ports (``http.server`` in a thread), the real
service and the real broker; the install test runs the real install path (a
TUF repository, ``Updater``, ONNX Runtime). Waits are asserted from below
only: a loaded machine makes them longer, never shorter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service import AgentService
from corral.profiles import FirmwareProfile
from corral.targets import file_target
from corral.topics import topic
from tests.agent.fixtures import wait_for
from tests.agent.test_service import (
    HOST,
    PORT,
    FakeUpdater,
    Registry,
    Watcher,
    make_images,
    make_service,
    publish_retained,
    pytestmark,  # noqa: F401 (skips without a broker)
)
from tests.agent.tuf_repo import (
    MODEL_FILE,
    TufRepo,
    enrolled,
    make_bundle,
    make_model,
    publish_bundle,
    serve_repo,
)

POLL_S = 0.05
# The registry's clock two seconds apart, years behind this machine's: an agent
# that measured the HTTP-date against its own clock would not wait at all.
REGISTRY_NOW = "Tue, 01 Jan 2019 00:00:00 GMT"
TWO_S_LATER = "Tue, 01 Jan 2019 00:00:02 GMT"


@pytest.fixture
def device_id() -> Iterator[str]:
    device = f"busy-{uuid.uuid4().hex[:12]}"
    yield device
    for kind in ("status", "desired"):
        publish_retained(topic(device, kind), b"")


def poll_times(
    tmp_path: Path, device_id: str, answers: list[tuple[int, dict[str, str]]], polls: int
) -> list[float]:
    """Run an agent whose poll gets ``answers`` first, then 1.1.0; the times of its polls."""
    registry = Registry()
    registry.answers = list(answers)
    registry.desired = {"model": "tiny", "version": "1.1.0"}
    updater = FakeUpdater(tmp_path / "models", bad=set(), current="1.0.0")
    service = make_service(tmp_path, device_id, registry, updater, poll_s=POLL_S)
    service.start()
    try:
        assert wait_for(lambda: len(registry.times) >= polls, timeout=20.0)
        # Once the registry answers, the desired version is installed as always.
        assert wait_for(lambda: service.installed == ("tiny", "1.1.0"), timeout=20.0)
    finally:
        service.stop()
        registry.close()
    return registry.times


@pytest.mark.parametrize(
    ("answer", "at_least_s"),
    [
        ((503, {"Retry-After": "1"}), 1.0),
        ((429, {"Retry-After": "1"}), 1.0),
        ((503, {"Date": REGISTRY_NOW, "Retry-After": TWO_S_LATER}), 2.0),
    ],
    ids=["503-seconds", "429-seconds", "503-http-date"],
)
def test_a_busy_answer_to_the_poll_is_waited_out(
    tmp_path: Path, device_id: str, answer: tuple[int, dict[str, str]], at_least_s: float
) -> None:
    times = poll_times(tmp_path, device_id, [answer], polls=3)
    # The poll after the busy answer waited what the registry asked (the interval
    # is 20 times shorter), counted from the answer, which came after the request.
    assert times[1] - times[0] >= at_least_s


def test_a_malformed_retry_after_is_ignored_and_the_poll_keeps_its_interval(
    tmp_path: Path, device_id: str
) -> None:
    # "3600 s" is no Retry-After; read as 3600 (capped at 600) the polls would stop.
    busy = (503, {"Retry-After": "3600 s"})
    times = poll_times(tmp_path, device_id, [busy] * 4, polls=6)
    assert len(times) >= 6


def test_a_download_the_registry_turns_away_waits_its_retry_after(
    tmp_path: Path, device_id: str
) -> None:
    repo = TufRepo()
    model = make_model(1)
    publish_bundle(repo, make_bundle("tiny", "1.0.0", model), {MODEL_FILE: model})
    model_path = repo.served_target_path(file_target("tiny", "1.0.0", MODEL_FILE))
    repo.busy[model_path] = [(503, "2")]
    with serve_repo(repo) as url:
        config = enrolled(
            tmp_path / "agent",
            repo,
            url,
            device_id=device_id,
            device_token="t",
            mqtt_host=HOST,
            mqtt_port=PORT,
            report_interval_s=0.5,
            poll_interval_s=POLL_S,
        )
        service = AgentService(
            config.data_dir,
            [f"folder:{make_images(tmp_path / 'imgs')}?fps=30"],
            config=config,
            profile=FirmwareProfile.from_dict({"name": "test", "runtime": {"batch_size": 2}}),
            poll_desired=lambda: ("tiny", "1.0.0"),
            retry_backoff_s=0.05,  # the doubling alone would retry within a second
        )
        watcher = Watcher(device_id)
        service.start()
        try:
            assert wait_for(lambda: watcher.of("events", event="installed", version="1.0.0"))
        finally:
            service.stop()
            watcher.close()

    failed = watcher.of("events", event="install_failed")
    assert len(failed) == 1
    body = failed[0].body
    assert (body["reason"], body["version"], body["retry_after_s"]) == (
        "registry_busy",
        "1.0.0",
        2.0,
    )
    assert body["retry_in_s"] >= 2.0
    assert "busy" in body["message"]
    tries = [
        t
        for (path, _), t in zip(repo.requests, repo.request_times, strict=True)
        if path == model_path
    ]
    assert len(tries) == 2
    assert tries[1] - tries[0] >= 2.0
