"""Devices: the fleet view, one device in detail, its desired version, scope, revocation.

Revoking a device, in one transaction: set ``revoked_at`` and write the
audit row. From then on
its token is refused (``api.deps.identify``) and MQTT ingest drops its
messages, counted as ``dropped_revoked``. The row stays, with its history;
the id stays taken.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry import audit
from registry._time import iso, utcnow
from registry.api.deps import AdminDep, CallerDep, OperatorDep, SessionDep, ViewerDep
from registry.core.security import Role
from registry.errors import AuthError, ConflictError, NotFoundError
from registry.schemas import (
    PROBLEM_RESPONSES,
    Desired,
    DeviceDetail,
    DeviceRevokeRequest,
    DeviceSummary,
    DeviceUpdate,
    EventOut,
    SeqStats,
    ShadowRef,
)
from registry.tables import Device, Event, Message

__all__ = ["router", "summary"]

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=PROBLEM_RESPONSES)

_EVENTS = 50


def summary(device: Device) -> DeviceSummary:
    """The API summary of a device row.

    Args:
        device: the row.

    Returns:
        Its summary.
    """
    return DeviceSummary(
        device_id=device.id,
        profile=device.profile,
        state=device.state,
        model=device.model,
        version=device.version,
        variant=device.variant,
        desired_model=device.desired_model,
        desired_version=device.desired_version,
        fps=device.fps,
        latency_p50_ms=device.latency_p50_ms,
        latency_p95_ms=device.latency_p95_ms,
        frames=device.frames or 0,
        drops=device.drops or 0,
        accuracy=device.accuracy,
        labelled=device.labelled or 0,
        cpu_percent=device.cpu_percent,
        memory_percent=device.memory_percent,
        gpu_temp_c=device.gpu_temp_c,
        last_seen=iso(device.last_seen),
        site=device.site,
        group=device.group,
        tags=list(device.tags or []),
        revoked_at=iso(device.revoked_at),
    )


def _get(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}; `corral devices` lists enrolled devices")
    return device


@router.get("", response_model=list[DeviceSummary])
def list_devices(
    _viewer: ViewerDep,
    session: SessionDep,
    site: str | None = None,
    group: str | None = None,
    tag: Annotated[list[str] | None, Query(description="Every tag given must be set.")] = None,
) -> list[DeviceSummary]:
    """Enrolled devices' summaries by id, optionally only those of a site, group or tags.

    Raises:
        AuthError: not a viewer.
    """
    query = select(Device).order_by(Device.id)
    if site is not None:
        query = query.where(Device.site == site)
    if group is not None:
        query = query.where(Device.group == group)
    devices = session.scalars(query)
    # Tags are a JSON list; filtering here keeps one query for SQLite and PostgreSQL.
    wanted = set(tag or ())
    return [summary(d) for d in devices if wanted <= set(d.tags or ())]


@router.get("/{device_id}", response_model=DeviceDetail)
def get_device(device_id: str, _viewer: ViewerDep, session: SessionDep) -> DeviceDetail:
    """One device: summary, last 50 events and seq accounting.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such device.
    """
    device = _get(session, device_id)
    low, high, count = session.execute(
        select(func.min(Message.seq), func.max(Message.seq), func.count(Message.id)).where(
            Message.device_id == device_id
        )
    ).one()
    missing = (high - low + 1 - count) if count else 0
    events = session.scalars(
        select(Event).where(Event.device_id == device_id).order_by(Event.seq.desc()).limit(_EVENTS)
    )
    return DeviceDetail(
        **summary(device).model_dump(),
        events=[
            EventOut(seq=e.seq, ts=e.ts, event=e.event, message=e.message, data=e.data)
            for e in events
        ],
        seq=SeqStats(min=low, max=high, count=count, missing=missing),
    )


@router.get("/{device_id}/desired", response_model=Desired)
def get_desired(device_id: str, caller: CallerDep, session: SessionDep) -> Desired:
    """The device's desired model version; for that device's token or any viewer.

    Raises:
        AuthError: a different device's token (or a revoked one's).
        NotFoundError: no such device.
    """
    if not caller.allows(Role.VIEWER) and caller.device_id != device_id:
        raise AuthError(f"a device token may read only its own desired version, not {device_id!r}")
    device = _get(session, device_id)
    shadow = None
    if device.shadow_model is not None and device.shadow_version is not None:
        shadow = ShadowRef(model=device.shadow_model, version=device.shadow_version)
    return Desired(
        model=device.desired_model,
        version=device.desired_version,
        variant=device.desired_variant,
        shadow=shadow,
    )


@router.patch("/{device_id}", response_model=DeviceSummary)
def update_device(
    device_id: str, body: DeviceUpdate, operator: OperatorDep, session: SessionDep
) -> DeviceSummary:
    """Set a device's site, group or tags (fields left out stay as they are).

    Raises:
        AuthError: not an operator.
        NotFoundError: no such device.
    """
    device = _get(session, device_id)
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        setattr(device, field, value)
    if changes:
        audit.record(session, operator, "device.update", device_id, **changes)
        session.commit()
    return summary(device)


@router.post("/{device_id}/revoke", response_model=DeviceSummary)
def revoke_device(
    device_id: str,
    admin: AdminDep,
    session: SessionDep,
    body: DeviceRevokeRequest | None = None,
) -> DeviceSummary:
    """Revoke a device: its token stops working and its MQTT messages are dropped.

    Raises:
        AuthError: not an admin.
        NotFoundError: no such device.
        ConflictError: it is revoked already.
    """
    device = _get(session, device_id)
    if device.revoked_at is not None:
        raise ConflictError(f"device {device_id!r} was revoked at {iso(device.revoked_at)}")
    device.revoked_at = utcnow()
    audit.record(session, admin, "device.revoke", device_id, reason=body.reason if body else "")
    session.commit()
    return summary(device)
