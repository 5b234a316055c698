"""Recent time series of a device, and fleet sparklines, for the console's charts.

Both read the stored ``messages`` table (every agent payload as received),
never a second copy. Each request is bounded twice, so one curious click on a
device with months of history costs no more than one with an hour:

1. at most ``limit`` points are returned (2,000 at most);
2. at most ``limit * SCAN_FACTOR`` of the device's newest messages, of every
   kind, are examined: the query walks the ``(device_id, seq)`` unique index
   backwards from the newest seq and stops there. A kind the device never
   sends (simulated agents send no telemetry) therefore costs a bounded scan,
   not the device's whole history. ``truncated`` says the limit or the cap
   ended the read before ``since``.

Points come back in columns, oldest first, with times in epoch seconds (what
uPlot, the console's chart library, draws): ``ts``, ``seq``, ``versions``
(the model version each point was measured on; null for telemetry) and
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

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import Subquery, func, select
from sqlalchemy.orm import Session

from registry._time import as_utc
from registry.api.deps import SessionDep, ViewerDep
from registry.errors import InvalidInputError, NotFoundError
from registry.tables import Device, Message

__all__ = [
    "FIELDS",
    "MAX_POINTS",
    "SCAN_FACTOR",
    "Series",
    "Sparklines",
    "router",
]

router = APIRouter(prefix="/api/v1", tags=["series"])

#: The most points one series answer carries.
MAX_POINTS = 2000
#: How many of a device's newest messages (all kinds) are examined per point asked for.
SCAN_FACTOR = 8
#: The most devices one sparkline request may name (a page of the fleet table).
MAX_SPARKLINE_DEVICES = 200

Kind = Literal["inference", "accuracy", "telemetry"]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _gpus(body: dict[str, Any]) -> list[dict[str, Any]]:
    gpus = body.get("gpus")
    return [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []


def _most(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _gpu_memory_percent(gpu: dict[str, Any]) -> float | None:
    used, total = _num(gpu.get("memory_used_mb")), _num(gpu.get("memory_total_mb"))
    return 100.0 * used / total if used is not None and total else None


def _telemetry(body: dict[str, Any]) -> dict[str, float | None]:
    gpus = _gpus(body)
    power = [p for g in gpus if (p := _num(g.get("power_w"))) is not None]
    return {
        "cpu_percent": _num(body.get("cpu_percent")),
        "memory_percent": _num(body.get("memory_percent")),
        "disk_percent": _num(body.get("disk_percent")),
        "gpu_temp_c": _most([_num(g.get("temp_c")) for g in gpus]),
        "gpu_util_percent": _most([_num(g.get("util_percent")) for g in gpus]),
        "gpu_memory_percent": _most([_gpu_memory_percent(g) for g in gpus]),
        "gpu_power_w": sum(power) if power else None,
        "throttled": (1.0 if any(g.get("throttle_reasons") for g in gpus) else 0.0)
        if gpus
        else None,
    }


def _inference(body: dict[str, Any]) -> dict[str, float | None]:
    latency = body.get("latency_ms")
    latency = latency if isinstance(latency, dict) else {}
    return {
        "fps": _num(body.get("fps")),
        "p50_ms": _num(latency.get("p50")),
        "p95_ms": _num(latency.get("p95")),
        "p99_ms": _num(latency.get("p99")),
        "frames": _num(body.get("frames")),
        "drops": _num(body.get("drops")),
        "errors": _num(body.get("errors")),
        "queue_depth": _num(body.get("queue_depth")),
    }


def _accuracy(body: dict[str, Any]) -> dict[str, float | None]:
    return {
        "accuracy": _num(body.get("accuracy")),
        "labelled": _num(body.get("labelled")),
        "correct": _num(body.get("correct")),
    }


_EXTRACT: dict[str, Callable[[dict[str, Any]], dict[str, float | None]]] = {
    "inference": _inference,
    "accuracy": _accuracy,
    "telemetry": _telemetry,
}

#: The numeric fields of each kind, in the order the columns come back.
FIELDS: dict[str, list[str]] = {kind: list(f({})) for kind, f in _EXTRACT.items()}


class Series(BaseModel):
    """A device's recent points of one kind, in columns, oldest first."""

    device_id: str
    kind: str
    fields: list[str]
    #: Payload times, epoch seconds.
    ts: list[float]
    seq: list[int]
    #: The model version each point was measured on (null for telemetry).
    versions: list[str | None]
    values: dict[str, list[float | None]]
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
    kind: Kind = "inference",
    since: Annotated[
        datetime | None, Query(description="Only points at or after this time (ISO 8601).")
    ] = None,
    after_seq: Annotated[
        int | None, Query(ge=0, description="Only points after this seq (live updates).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 600,
) -> Series:
    """A device's recent ``inference``, ``accuracy`` or ``telemetry`` points (module docstring).

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such device.
    """
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"no device {device_id!r}; `corral devices` lists enrolled devices")
    rows = _recent(session, device_id, kind, limit, after_seq)
    capped = len(rows) < limit and _capped(session, device_id, limit, after_seq)
    cutoff = as_utc(since).timestamp() if since is not None else None
    extract = _EXTRACT[kind]
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
        for name, value in extract(payload).items():
            values[name].append(value)
    return Series(
        device_id=device_id,
        kind=kind,
        fields=fields,
        ts=ts,
        seq=seqs,
        versions=versions,
        values=values,
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
        ordered = [_inference(payload) for _, _, payload in reversed(rows)]
        answer[device_id] = {
            "fps": [p["fps"] for p in ordered],
            "p95_ms": [p["p95_ms"] for p in ordered],
        }
    return Sparklines(points=points, devices=answer)
