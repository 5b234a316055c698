"""Attacks with people's tokens: role escalation, and secrets leaking into logs or answers.

Role escalation is checked for every operation the running registry's OpenAPI
document lists, not a hand-made list: the least role each route demands is
read from its dependencies (``registry.api.deps``), and every weaker caller
(no token, a device token, each lesser role) must get 403 with a message
naming the role. A route with no token check at all must be on ``PUBLIC``,
so a new route cannot be public by accident. tests/registry/test_people.py
covers the allowed side (each role gets past its routes), a viewer's refused
rollout changing nothing, an operator refused an admin token, revoked API
tokens, and the audit log holding no secret.

Secrets: every token and password the registry and the agents handle goes
through the error paths an attacker can trigger (used, expired and unknown
enrolment tokens, revoked and wrong tokens, tokens of the wrong kind, bodies
that fail validation, refused installs), and none may appear in an HTTP
answer (body or headers), in any log record (the registry's, uvicorn's access
and error logs, the agent's, httpx's) or in the errors the agent raises.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import update

import registry.api.routes
from agent.enrol import enrol
from agent.errors import AgentError
from registry._time import utcnow
from registry.tables import EnrolmentToken
from tests.registry.conftest import RunningRegistry
from tests.security.conftest import FACTS, Site, profile

ROLES = ("viewer", "operator", "admin")
_NEEDS = {
    "require_caller": "any",
    "require_viewer": "viewer",
    "require_operator": "operator",
    "require_admin": "admin",
}
#: Operations that check no token, and why.
PUBLIC = {
    ("GET", "/healthz"): "liveness probe",
    ("POST", "/api/v1/enrol"): "the one-time enrolment token travels in the body",
    ("GET", "/tuf/metadata/{name}"): "signed, not secret; agents verify it",
    ("GET", "/tuf/time"): "signed with the caller's nonce",
    ("GET", "/downloads/corral-agent.whl"): "the agent wheel holds no secret",
}
#: Operations that authorise in their own body, before streaming, not by a dependency.
SELF_AUTHORISED = {("GET", "/api/v1/console/stream"): "viewer"}


def _needs(dependant: Dependant) -> set[str]:
    found: set[str] = set()
    for dependency in dependant.dependencies:
        name = getattr(dependency.call, "__name__", "")
        if name in _NEEDS:
            found.add(_NEEDS[name])
        found |= _needs(dependency)
    return found


def _routes() -> dict[tuple[str, str], tuple[APIRoute, str | None]]:
    """(method, path) -> (route, least role) of every router in registry.api.routes."""
    found: dict[tuple[str, str], tuple[APIRoute, str | None]] = {}
    for info in pkgutil.iter_modules(registry.api.routes.__path__):
        module = importlib.import_module(f"registry.api.routes.{info.name}")
        router = getattr(module, "router", None)
        for route in router.routes if router is not None else ():
            if not isinstance(route, APIRoute):
                continue
            needs = _needs(route.dependant)
            assert len(needs) <= 1, f"{route.path} has several auth dependencies: {needs}"
            for method in route.methods or ():
                found[(method, route.path_format)] = (route, next(iter(needs), None))
    return found


def _concrete(route: APIRoute | None, path: str) -> str:
    """``path`` with each parameter filled in: ``1`` for integers, ``x`` otherwise."""
    kinds = {p.name: p.field_info.annotation for p in route.dependant.path_params} if route else {}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        return "1" if kinds.get(name) is int else "x"

    return re.sub(r"\{([^}]+)\}", fill, path)


@pytest.fixture
def callers(registry: RunningRegistry) -> Iterator[dict[str, httpx.Client]]:
    """A client per kind of caller below admin: none, a device, a viewer, an operator."""
    device = registry.enrol(registry.unique_id("cam"))["device_token"]
    tokens = {"device": device} | {r: registry.api_token(r) for r in ROLES[:2]}
    clients = {"anonymous": registry.anon} | {k: registry.client(t) for k, t in tokens.items()}
    yield clients
    for name, client in clients.items():
        if name != "anonymous":
            client.close()


def test_no_operation_lets_a_weaker_caller_through(
    registry: RunningRegistry, callers: dict[str, httpx.Client]
) -> None:
    document = registry.anon.get("/openapi.json").json()
    routes = _routes()
    operations = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) > 30
    public, let_through = [], []
    for method, path in operations:
        route, needs = routes.get((method, path), (None, None))
        needs = needs or SELF_AUTHORISED.get((method, path))
        if needs is None:
            public.append((method, path))
            continue
        weaker = ["anonymous"] + ([] if needs == "any" else ["device"])
        weaker += [r for r in ROLES[:2] if needs in ROLES and ROLES.index(r) < ROLES.index(needs)]
        url = _concrete(route, path)
        for who in weaker:
            body: dict[str, str] | None = {} if method in ("POST", "PUT", "PATCH") else None
            answer = callers[who].request(method, url, json=body)
            if answer.status_code != 403:
                let_through.append(f"{method} {url} as {who}: {answer.status_code}")
            elif who in ROLES and f"needs the {needs} role" not in answer.json()["detail"]:
                let_through.append(f"{method} {url} as {who}: {answer.json()['detail']}")
    assert let_through == []
    assert sorted(public) == sorted(PUBLIC), "a route without a token check is not on PUBLIC"


# --- secrets -------------------------------------------------------------------------------


class Recorder:
    """Every HTTP answer the test received, to search for secrets."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def hook(self, response: httpx.Response) -> None:
        response.read()
        self.seen.append((response.status_code, f"{dict(response.headers)} {response.text}"))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG, uvicorn's access and error logs (not propagated) included."""
    caplog.set_level(logging.DEBUG)
    own = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    levels = [logger.level for logger in own]
    for logger in own:
        logger.addHandler(caplog.handler)
        logger.setLevel(logging.DEBUG)
    yield caplog
    for logger, level in zip(own, levels, strict=True):
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)


def test_no_secret_reaches_a_log_or_an_answer(
    site: Site, logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    registry = site.registry
    recorder = Recorder()
    hooks = {"response": [recorder.hook]}
    secrets: dict[str, str] = {"admin": registry.context.admin_token}
    clients: list[httpx.Client] = []

    def client(token: str | None, scheme: str = "Bearer") -> httpx.Client:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        made = httpx.Client(base_url=registry.url, headers=headers, event_hooks=hooks)
        clients.append(made)
        return made

    admin = client(secrets["admin"])
    for role in ("viewer", "operator"):
        answer = admin.post("/api/v1/tokens", json={"name": f"{role}-1", "role": role})
        secrets[role] = answer.json()["token"]
    secrets["revoked"] = admin.post("/api/v1/tokens", json={"name": "old", "role": "admin"}).json()[
        "token"
    ]
    assert admin.post("/api/v1/tokens/old/revoke").status_code == 200
    for name in ("enrolment-used", "enrolment-expired", "enrolment-unused"):
        secrets[name] = admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]

    # A device enrolled by the agent's own code, installing through the registry.
    site.push("1.0.0")
    site.push("1.1.0")
    agent = site.agent("cam")
    secrets["device"] = agent.token
    site.assign(agent, "1.0.0")
    agent.updater.install("tiny", "1.0.0")
    anon = client(None)
    used = anon.post(
        "/api/v1/enrol", json={"token": secrets["enrolment-used"], "device_id": "cam-used"}
    )
    assert used.status_code == 201
    secrets["device-2"] = used.json()["device_token"]
    with registry.context.sessions() as session:
        session.execute(
            update(EnrolmentToken)
            .where(EnrolmentToken.device_id.is_(None), EnrolmentToken.used_at.is_(None))
            .values(expires=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    secrets["enrolment-expired"] = secrets.pop("enrolment-unused")  # both expired now

    # Error paths an attacker reaches with (near) secrets.
    errors: list[str] = []
    for token in (secrets["enrolment-used"], secrets["enrolment-expired"]):
        assert anon.post("/api/v1/enrol", json={"token": token, "device_id": "cam-x"}).is_error
        assert anon.post("/api/v1/enrol", json={"token": token, "device_id": "Bad Id"}).is_error
        assert anon.post("/api/v1/enrol", json={"token": token + "x", "device_id": "c"}).is_error
        assert client(token).get("/api/v1/devices").status_code == 403
        try:
            enrol(registry.url, token, "cam-agent", tmp_path / "again", FACTS, profile())
        except AgentError as e:
            errors.append(str(e))
    for name in ("revoked", "device", "device-2", "viewer", "operator"):
        refused = client(secrets[name])
        assert refused.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).is_error
        assert refused.get("/api/v1/audit").status_code == 403
        assert client(secrets[name] + "x").get("/api/v1/models").status_code == 403
    assert client(secrets["admin"], scheme="Basic").get("/api/v1/audit").status_code == 403
    assert admin.post("/api/v1/enrol", json={"token": 7, "device_id": []}).status_code == 422
    try:
        agent.updater.install("tiny", "1.1.0")  # not assigned: refused with 403
    except AgentError as e:
        errors.append(str(e))
    for made in clients:
        made.close()

    logged = logs.text + "\n".join(r.getMessage() for r in logs.records)
    assert len(errors) == 3 and len(recorder.seen) > 30
    # Creating a token or enrolling answers (201) the new secret, once; nothing else may.
    others = [text for status, text in recorder.seen if status != 201]
    for name, secret in secrets.items():
        assert secret not in logged, f"the {name} token is in a log record"
        leaked = [text[:200] for text in others if secret in text]
        assert leaked == [], f"the {name} token is in an answer"
        assert not any(secret in e for e in errors), f"the {name} token is in an agent error"
