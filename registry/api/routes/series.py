"""Time series of a device, and fleet sparklines, for the console's charts.

A series comes as reported (raw) or in buckets. ``registry.retention`` folds
every report into per-device buckets of ``CORRAL_RETENTION__BUCKET_S`` and
deletes raw reports after ``CORRAL_RETENTION__RAW_DAYS``; buckets answer when
``bucket_s`` is asked for, or when ``since`` reaches back past that raw
horizon, so a chart over months reads at most a few thousand bucket rows.
Points are then as wide as asked, widened until at most ``limit`` of them
cover the window, to a multiple of the stored width that divides a day, or to
whole days. A point's time is its bucket's start, its ``seq`` the newest
report folded into it, its value the bucket's figure
(``registry.retention.RULES``: a mean; fps as frames over seconds; accuracy
as correct over labelled; p95 and p99 the worst window's) and ``peaks`` the
greatest value behind it. Reports that arrived since the job's last run
(``CORRAL_RETENTION__INTERVAL_S``) are not in buckets yet.

Raw answers read the stored ``messages`` table (every agent payload as
received). Each is bounded twice, so one curious click on a device with days
of history costs no more than one with an hour:

1. at most ``limit`` points are returned (2,000 at most);
2. at most ``limit * SCAN_FACTOR`` of the device's newest messages, of every
   kind, are examined: the query walks the ``(device_id, seq)`` unique index
   backwards from the newest seq and stops there. A kind the device never
   sends (simulated agents send no telemetry) therefore costs a bounded scan,
   not the device's whole history. ``truncated`` says the limit or the cap
   ended the read before ``since``.

Points come back in columns, oldest first, with times in epoch seconds (what
uPlot, the console's chart library, draws): ``ts``, ``seq``, ``versions``
(the model version each point was measured on; null for telemetry, or a
bucket that spans versions), ``reports`` (1 for a raw point) and
``values[field]``, one list per numeric field of the kind (null where a
payload did not carry it):

============  ===============================================================
kind          fields
============  ===============================================================
inference     fps, p50_ms, p95_ms, p99_ms, frames, drops, errors, queue_depth
accuracy      accuracy, labelled, correct
telemetry     cpu_percent, memory_percent, disk_percent, gpu_temp_c (hottest),
              gpu_util_percent (busiest), gpu_memory_percent (fullest),
              gpu_power_w (sum), throttled (1 when any GPU reports a reason)
============  ===============================================================
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import Subquery, func, select
from sqlalchemy.orm import Session

from registry._time import as_utc, utcnow
from registry.api.deps import ContextDep, SessionDep, ViewerDep
from registry.errors import InvalidInputError, NotFoundError
from registry.retention import FIELDS, figures, read_buckets
from registry.schemas import MAX_ID, PROBLEM_RESPONSES
from registry.tables import Device, Message

__all__ = [
    "FIELDS",
    "MAX_BUCKET_S",
    "MAX_POINTS",
    "SCAN_FACTOR",
    "Series",
    "Sparklines",
    "router",
]

router = APIRouter(prefix="/api/v1", tags=["series"], responses=PROBLEM_RESPONSES)

#: The most points one series answer carries.
MAX_POINTS = 2000
#: How many of a device's newest messages (all kinds) are examined per point asked for.
SCAN_FACTOR = 8
#: The widest point a bucketed answer may be asked for: 31 days.
MAX_BUCKET_S = 31 * 86400
#: The most devices one sparkline request may name (a page of the fleet table).
MAX_SPARKLINE_DEVICES = 200

Kind = Literal["inference", "accuracy", "telemetry"]


class Series(BaseModel):
    """A device's points of one kind, in columns, oldest first."""

    device_id: str
    kind: str
    fields: list[str]
    #: Payload times (bucket starts), epoch seconds.
    ts: list[float]
    #: The point's seq (a bucket's newest), for ``after_seq``.
    seq: list[int]
    #: The model version each point was measured on (null for telemetry).
    versions: list[str | None]
    values: dict[str, list[float | None]]
    #: Null: points as reported. Else the width of every point, in seconds.
    bucket_s: int | None = None
    #: How many reports are behind each point.
    reports: list[int]
    #: Buckets only: the greatest value behind each point, per field.
    peaks: dict[str, list[float | None]] = {}
    #: The limit or the scan cap ended the read before ``since``: older points may
    #: exist that were not read (ask with a later ``since`` or a larger ``limit``).
    truncated: bool


class Sparklines(BaseModel):
    """The last inference windows of several devices: fps and p95 per device."""

    points: int
    devices: dict[str, dict[str, list[float | None]]]


def _epoch(ts: str) -> float | None:
    try:
        return as_utc(datetime.fromisoformat(ts.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        return None


def _newest(device_id: str, after_seq: int | None, cap: int) -> Subquery:
    """The device's newest ``cap`` messages of every kind: the bounded scan."""
    query = select(Message.seq, Message.kind, Message.ts, Message.payload).where(
        Message.device_id == device_id
    )
    if after_seq is not None:
        query = query.where(Message.seq > after_seq)
    return query.order_by(Message.seq.desc()).limit(cap).subquery()


def _recent(
    session: Session, device_id: str, kind: str, limit: int, after_seq: int | None = None
) -> list[tuple[int, str, dict[str, Any]]]:
    """The newest ``limit`` messages of ``kind`` within the scan cap, newest first."""
    scanned = _newest(device_id, after_seq, limit * SCAN_FACTOR)
    rows = session.execute(
        select(scanned.c.seq, scanned.c.ts, scanned.c.payload)
        .where(scanned.c.kind == kind)
        .order_by(scanned.c.seq.desc())
        .limit(limit)
    ).all()
    return [(int(seq), str(ts), dict(payload)) for seq, ts, payload in rows]  # type: ignore[call-overload]


def _capped(session: Session, device_id: str, limit: int, after_seq: int | None) -> bool:
    """Whether the scan cap, not the device's history, ended the scan."""
    cap = limit * SCAN_FACTOR
    scanned = _newest(device_id, after_seq, cap)
    return (session.scalar(select(func.count()).select_from(scanned)) or 0) >= cap


@router.get("/devices/{device_id}/series", response_model=Series)
def device_series(
    device_id: str,
    _viewer: ViewerDep,
    session: SessionDep,
    context: ContextDep,
    kind: Kind = "inference",
    since: Annotated[
        datetime | None, Query(description="Only points at or after this time (ISO 8601).")
    ] = None,
    after_seq: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="Only points after this seq (live updates)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 600,
    bucket_s: Annotated[
        int | None,
        Query(ge=1, le=MAX_BUCKET_S, description="Answer in buckets at least this wide."),
    ] = None,
) -> Series:
    """A device's ``inference``, ``accuracy`` or ``telemetry`` points (module docstring).

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such device.
    """
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"no device {device_id!r}; `corral devices` lists enrolled devices")
    policy = context.settings.retention
    now = utcnow()
    horizon = now - timedelta(days=policy.raw_days)
    if after_seq is None and (
        bucket_s is not None or (since is not None and as_utc(since) < horizon)
    ):
        return _bucketed(session, device_id, kind, since, now, limit, bucket_s, policy.bucket_s)
    return _raw(session, device_id, kind, since, after_seq, limit)


def _bucketed(
    session: Session,
    device_id: str,
    kind: str,
    since: datetime | None,
    now: datetime,
    limit: int,
    asked_s: int | None,
    stored_s: int,
) -> Series:
    """The series in points of whole stored buckets, at most ``limit`` of them."""
    wanted = asked_s or stored_s
    if since is not None:
        wanted = max(wanted, math.ceil((now - as_utc(since)).total_seconds() / limit))
    width = _width(wanted, stored_s)
    points = read_buckets(session, device_id, kind, since, width)
    truncated = len(points) > limit
    points = points[-limit:]
    fields = FIELDS[kind]
    return Series(
        device_id=device_id,
        kind=kind,
        fields=fields,
        ts=[p.start.timestamp() for p in points],
        seq=[p.last_seq for p in points],
        versions=[p.version for p in points],
        values={f: [p.values[f] for p in points] for f in fields},
        bucket_s=width,
        reports=[p.reports for p in points],
        peaks={f: [p.peaks[f] for p in points] for f in fields},
        truncated=truncated,
    )


def _width(wanted: int, stored_s: int) -> int:
    """The narrowest width of at least ``wanted`` that keeps points aligned to days.

    Within a day: a multiple of the stored width that divides a day (the stored
    width does); beyond: whole days.
    """
    if wanted > 86400:
        return math.ceil(wanted / 86400) * 86400
    return next(w for w in range(stored_s, 86400 + 1, stored_s) if w >= wanted and 86400 % w == 0)


def _raw(
    session: Session,
    device_id: str,
    kind: str,
    since: datetime | None,
    after_seq: int | None,
    limit: int,
) -> Series:
    """The series as reported: the newest ``limit`` points within the scan cap."""
    rows = _recent(session, device_id, kind, limit, after_seq)
    capped = len(rows) < limit and _capped(session, device_id, limit, after_seq)
    cutoff = as_utc(since).timestamp() if since is not None else None
    fields = FIELDS[kind]
    ts: list[float] = []
    seqs: list[int] = []
    versions: list[str | None] = []
    values: dict[str, list[float | None]] = {f: [] for f in fields}
    reached_since = False
    for seq, stamp, payload in reversed(rows):
        at = _epoch(stamp)
        if at is None:
            continue  # the contract checks ts on ingest; an unreadable one is skipped, not fatal
        if cutoff is not None and at < cutoff:
            reached_since = True
            continue
        ts.append(at)
        seqs.append(seq)
        version = payload.get("version")
        versions.append(version if isinstance(version, str) else None)
        for name, value in figures(kind, payload).items():
            values[name].append(value)
    return Series(
        device_id=device_id,
        kind=kind,
        fields=fields,
        ts=ts,
        seq=seqs,
        versions=versions,
        values=values,
        reports=[1] * len(ts),
        truncated=(len(rows) == limit or capped) and not reached_since,
    )


@router.get("/fleet/sparklines", response_model=Sparklines)
def sparklines(
    _viewer: ViewerDep,
    session: SessionDep,
    device: Annotated[list[str], Query(description="Device ids (a page of the fleet table).")],
    points: Annotated[int, Query(ge=2, le=120)] = 30,
) -> Sparklines:
    """The last ``points`` inference windows' fps and p95 of each named device.

    Unknown ids are left out of the answer rather than refused: the fleet
    table may name a device revoked or removed a moment ago.

    Raises:
        AuthError: not a viewer.
        InvalidInputError: more than ``MAX_SPARKLINE_DEVICES`` ids.
    """
    if len(device) > MAX_SPARKLINE_DEVICES:
        raise InvalidInputError(
            f"at most {MAX_SPARKLINE_DEVICES} devices per request, got {len(device)}; "
            "ask for one page of the fleet at a time"
        )
    known = set(session.scalars(select(Device.id).where(Device.id.in_(set(device)))))
    answer: dict[str, dict[str, list[float | None]]] = {}
    for device_id in sorted(known):
        rows = _recent(session, device_id, "inference", points)
        ordered = [figures("inference", payload) for _, _, payload in reversed(rows)]
        answer[device_id] = {
            "fps": [p["fps"] for p in ordered],
            "p95_ms": [p["p95_ms"] for p in ordered],
        }
    return Sparklines(points=points, devices=answer)
