"""The web console: a single-page app, its static files, who is signed in, and a live stream.

=================================  ========  ===========================================
route                              who       what
=================================  ========  ===========================================
``GET /``                          anyone    the page (it asks for a token itself)
``GET /static/{path}``             anyone    the app's scripts, styles and vendored
                                             libraries (``registry/static``), with ETags
``GET /api/v1/console/me``         viewer    the signed-in token's name and role, so
                                             the page shows only the buttons it may use
``GET /api/v1/console/stream``     viewer    server-sent events: the fleet, the
                                             rollouts and the count of firing alerts
                                             as they change (below)
=================================  ========  ===========================================

Sign-in: the page takes an API token in a form (or once from ``#token=``, the
address ``corral registry serve`` prints), checks it with ``/me`` and keeps it
in sessionStorage, so it is gone when the tab closes and never travels in a
URL the server logs. Every API call sends it as ``Authorization: Bearer``;
the browser's ``EventSource`` cannot send that header, so the page reads the
stream with ``fetch``. Nothing is loaded from outside the registry: park
networks and this build machine are offline, and the Content-Security-Policy
says so.

The stream, per connection: a ``hello`` event (who, the interval), then
every ``interval_s`` one snapshot taken in a worker thread with its own short
session (never a session held open for the stream's life: on SQLite an open
read transaction keeps the WAL from being checkpointed). The first
``devices`` and ``rollouts`` events carry everything (``full: true``); later
ones only the devices and rollouts whose summary changed, and ids that went
away. An ``alerts`` event carries the counts of firing alerts and the newest
alert and governance action (the navigation bar's count; the alerts page
reloads when it changes), first and whenever it changes. A ``tick`` event
closes every snapshot. The token is checked again on
every snapshot, so a revoked token's stream ends within one interval with a
``denied`` event. A stream lasts ``STREAM_S`` seconds, then the page
reconnects (and gets a full snapshot again): uvicorn waits for open
responses before it shuts down, so an endless stream would hold a stopping
registry hostage.

One snapshot is one column query over the devices (no ORM objects: about
11 ms for a thousand devices on this 2-core machine), one over the 200
newest rollouts and two grouped counts over their devices and log entries,
two small counts over the open alerts and actions: the same order of work as
one ``/metrics`` scrape.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from registry._time import iso, utcnow
from registry.api.deps import ContextDep, ViewerDep, identify
from registry.core.context import RegistryContext
from registry.core.security import Caller, Role
from registry.errors import AuthError, NotFoundError
from registry.schemas import PROBLEM_RESPONSES
from registry.tables import (
    Alert,
    Device,
    PolicyAction,
    Rollout,
    RolloutDevice,
    RolloutLogEntry,
)

__all__ = ["ACTIVE_STATES", "STREAM_S", "ConsoleUser", "router"]

router = APIRouter(tags=["console"], responses=PROBLEM_RESPONSES)

K = TypeVar("K", str, int)

#: How long one event stream lasts before the page reconnects.
STREAM_S = 12.0
#: Rollout states whose progress still moves.
ACTIVE_STATES = ("running", "waiting_approval", "paused", "rolling_back")
#: The newest rollouts the stream follows (the rollouts page lists these).
_ROLLOUTS = 200

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
_SECURITY = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}


class ConsoleUser(BaseModel):
    """Who a console token belongs to."""

    name: str
    role: Role


@cache
def _page() -> str:
    return resources.files("registry").joinpath("static/console.html").read_text("utf-8")


@cache
def _static(path: str) -> tuple[bytes, str, str]:
    """The bytes, content type and ETag of ``registry/static/<path>``.

    Raises:
        NotFoundError: no such file, a path that climbs out, or a type not served.
    """
    parts = path.split("/")
    suffix = "." + parts[-1].rpartition(".")[2] if "." in parts[-1] else ""
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts) or suffix not in _TYPES:
        raise NotFoundError(f"no console file {path!r}")
    node = resources.files("registry").joinpath("static")
    for part in parts:
        node = node.joinpath(part)
    if not node.is_file():
        raise NotFoundError(f"no console file {path!r}")
    data = node.read_bytes()
    return data, _TYPES[suffix], '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def console() -> HTMLResponse:
    """The console page; the app routes itself by the fragment (``#/devices/ID``)."""
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache", **_SECURITY})


@router.get("/static/{path:path}", include_in_schema=False)
def static_file(path: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """A file of the console: revalidated on every load (ETag), so an upgrade shows at once.

    Raises:
        NotFoundError: no such file.
    """
    data, media_type, etag = _static(path)
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


@router.get("/api/v1/console/me", response_model=ConsoleUser, tags=["console"])
def me(viewer: ViewerDep) -> ConsoleUser:
    """The name and role of the token sent: the console's sign-in check.

    Raises:
        AuthError: no token, an unknown or revoked one, or a device token.
    """
    assert viewer.role is not None  # ViewerDep admits only tokens with a role
    return ConsoleUser(name=viewer.name, role=viewer.role)


def _authorise(context: RegistryContext, session: Session, authorization: str | None) -> Caller:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the stream needs 'Authorization: Bearer <token>'; sign in again")
    caller = identify(context, session, token.strip())
    if not caller.allows(Role.VIEWER):
        raise AuthError(f"the console needs a viewer, operator or admin token, not {caller.name!r}")
    return caller


def _rollout_digests(session: Session) -> list[dict[str, Any]]:
    """What the rollouts page lists: one small dict per rollout, newest first."""
    rows = session.execute(
        select(
            Rollout.id,
            Rollout.model,
            Rollout.version,
            Rollout.environment,
            Rollout.state,
            Rollout.stage,
            Rollout.plan,
            Rollout.gates,
            Rollout.reason,
            Rollout.created_at,
            Rollout.created_by,
            Rollout.updated_at,
        )
        .order_by(Rollout.id.desc())
        .limit(_ROLLOUTS)
    ).all()
    ids = [r.id for r in rows]
    progress: dict[int, dict[str, int]] = {i: {} for i in ids}
    logs: dict[int, int] = {}
    if ids:
        counts = session.execute(
            select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
            .where(RolloutDevice.rollout_id.in_(ids))
            .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
        )
        for rollout_id, state, n in counts:
            progress[rollout_id][state] = n
        logs = dict(
            session.execute(
                select(RolloutLogEntry.rollout_id, func.max(RolloutLogEntry.id))
                .where(RolloutLogEntry.rollout_id.in_(ids))
                .group_by(RolloutLogEntry.rollout_id)
            ).all()
        )
    digests = []
    for r in rows:
        plan: dict[str, Any] = r.plan or {}
        stages = plan.get("stages") or []
        gates: dict[str, Any] = r.gates or {}
        digests.append(
            {
                "id": r.id,
                "model": r.model,
                "version": r.version,
                "environment": r.environment,
                "mode": plan.get("mode", "continuous"),
                "state": r.state,
                "active": r.state in ACTIVE_STATES,
                "stage": r.stage,
                "stages": [s.get("name", str(i)) for i, s in enumerate(stages)],
                "reason": r.reason,
                "created_at": iso(r.created_at),
                "created_by": r.created_by,
                "updated_at": iso(r.updated_at),
                "devices": sum(progress[r.id].values()),
                "progress": progress[r.id],
                "log_mark": logs.get(r.id, 0),
                "gates_at": max((str(g.get("at", "")) for g in gates.values()), default=""),
            }
        )
    return digests


def _alert_digest(session: Session) -> dict[str, Any]:
    """Counts of the firing alerts and the open governance actions, and the newest of each.

    ``firing``, ``critical`` and ``unacknowledged`` leave silenced alerts out: a
    silence is there to stop the noise, the navigation bar included.
    """
    digest = {
        "firing": 0,
        "critical": 0,
        "unacknowledged": 0,
        "silenced": 0,
        "latest": 0,
        "pending_actions": 0,
        "open_actions": 0,
        "latest_action": 0,
    }
    rows = session.execute(
        select(
            Alert.severity,
            Alert.silenced,
            func.count(),
            func.count(Alert.acknowledged_at),
        )
        .where(Alert.resolved_at.is_(None))
        .group_by(Alert.severity, Alert.silenced)
    )
    for severity, silenced, n, acknowledged in rows:
        if silenced:
            digest["silenced"] += n
            continue
        digest["firing"] += n
        digest["unacknowledged"] += n - acknowledged
        if severity == "critical":
            digest["critical"] += n
    for state, n in session.execute(
        select(PolicyAction.state, func.count())
        .where(PolicyAction.state.in_(("pending", "queued", "running")))
        .group_by(PolicyAction.state)
    ):
        digest["open_actions"] += n
        if state == "pending":
            digest["pending_actions"] = n
    # The newest ids tell the alerts page that one fired and another resolved meanwhile.
    digest["latest"] = session.scalar(select(func.max(Alert.id))) or 0
    digest["latest_action"] = session.scalar(select(func.max(PolicyAction.id))) or 0
    return digest


@dataclass
class _Snapshot:
    devices: dict[str, dict[str, Any]]
    rollouts: dict[int, dict[str, Any]]
    alerts: dict[str, Any]


#: The device columns a summary is made of, read without building ORM objects.
_SUMMARY_COLUMNS = (
    Device.id,
    Device.profile,
    Device.state,
    Device.model,
    Device.version,
    Device.variant,
    Device.desired_model,
    Device.desired_version,
    Device.fps,
    Device.latency_p50_ms,
    Device.latency_p95_ms,
    Device.frames,
    Device.drops,
    Device.correct,
    Device.labelled,
    Device.cpu_percent,
    Device.memory_percent,
    Device.gpu_temp_c,
    Device.last_seen,
    Device.site,
    Device.group,
    Device.tags,
    Device.revoked_at,
)


def _fleet(session: Session) -> dict[str, dict[str, Any]]:
    """Every device's summary, as ``GET /api/v1/devices`` gives it, from one column query.

    Five times cheaper than ORM rows through ``devices.summary`` (about 11 ms
    against 58 ms for a thousand devices), which matters at one snapshot per
    open console every two seconds; ``tests/console/test_api.py`` checks that
    both give the same dicts.
    """
    fleet = {}
    for r in session.execute(select(*_SUMMARY_COLUMNS).order_by(Device.id)):
        fleet[r.id] = {
            "device_id": r.id,
            "profile": r.profile,
            "state": r.state,
            "model": r.model,
            "version": r.version,
            "variant": r.variant,
            "desired_model": r.desired_model,
            "desired_version": r.desired_version,
            "fps": r.fps,
            "latency_p50_ms": r.latency_p50_ms,
            "latency_p95_ms": r.latency_p95_ms,
            "frames": r.frames or 0,
            "drops": r.drops or 0,
            "accuracy": r.correct / r.labelled if r.labelled else None,
            "labelled": r.labelled or 0,
            "cpu_percent": r.cpu_percent,
            "memory_percent": r.memory_percent,
            "gpu_temp_c": r.gpu_temp_c,
            "last_seen": iso(r.last_seen),
            "site": r.site,
            "group": r.group,
            "tags": list(r.tags or []),
            "revoked_at": iso(r.revoked_at),
        }
    return fleet


def _snapshot(context: RegistryContext, authorization: str | None) -> _Snapshot:
    """One look at the fleet, the rollouts and the alerts, in a session of its own.

    Raises:
        AuthError: the token is no longer good for the console.
    """
    with context.sessions() as session:
        _authorise(context, session, authorization)
        return _Snapshot(
            _fleet(session),
            {r["id"]: r for r in _rollout_digests(session)},
            _alert_digest(session),
        )


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class _Sent:
    """What this connection has told the page, to send only what changed."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    rollouts: dict[int, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[str, Any] = field(default_factory=dict)
    first: bool = True


def _diff(old: Mapping[K, Any], new: Mapping[K, Any]) -> tuple[list[Any], list[K]]:
    """The values of ``new`` that differ from ``old``, and the keys gone from it."""
    return [v for k, v in new.items() if old.get(k) != v], [k for k in old if k not in new]


def _changes(sent: _Sent, now: _Snapshot) -> list[bytes]:
    events = []
    for name, (changed, removed) in (
        ("devices", _diff(sent.devices, now.devices)),
        ("rollouts", _diff(sent.rollouts, now.rollouts)),
    ):
        if sent.first or changed or removed:
            body = {"full": sent.first, "changed": changed, "removed": removed}
            events.append(_event(name, body))
    if sent.first or now.alerts != sent.alerts:
        events.append(_event("alerts", now.alerts))
    sent.devices, sent.rollouts, sent.alerts = now.devices, now.rollouts, now.alerts
    sent.first = False
    return events


async def _events(
    request: Request,
    context: RegistryContext,
    authorization: str | None,
    caller: Caller,
    every: float,
) -> AsyncIterator[bytes]:
    assert caller.role is not None
    yield b"retry: 2000\n\n"
    yield _event("hello", {"name": caller.name, "role": caller.role.value, "interval_s": every})
    sent = _Sent()
    ends = time.monotonic() + STREAM_S
    while True:
        try:
            snapshot = await run_in_threadpool(_snapshot, context, authorization)
        except AuthError as e:
            yield _event("denied", {"detail": str(e)})
            return
        for chunk in _changes(sent, snapshot):
            yield chunk
        yield _event("tick", {"at": iso(utcnow())})
        if time.monotonic() + every > ends or await request.is_disconnected():
            yield _event("bye", {"reconnect": True})
            return
        await asyncio.sleep(every)


@router.get("/api/v1/console/stream", tags=["console"], response_class=StreamingResponse)
async def stream(
    request: Request,
    context: ContextDep,
    authorization: Annotated[str | None, Header()] = None,
    interval_s: Annotated[float, Query(ge=0.5, le=30.0)] = 2.0,
) -> StreamingResponse:
    """Server-sent events of the fleet, rollouts and alerts as they change (module docstring).

    Raises:
        AuthError: no token, an unknown or revoked one, or a device token (403,
            before the stream starts).
    """

    def check() -> Caller:
        with context.sessions() as session:
            return _authorise(context, session, authorization)

    caller = await run_in_threadpool(check)
    return StreamingResponse(
        _events(request, context, authorization, caller, interval_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
