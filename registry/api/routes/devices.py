"""Devices: the fleet view, one device in detail, and a device's desired version."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry._time import iso
from registry.api.deps import AdminDep, CallerDep, SessionDep
from registry.errors import AuthError, NotFoundError
from registry.schemas import Desired, DeviceDetail, DeviceSummary, EventOut, SeqStats
from registry.tables import Device, Event, Message

__all__ = ["router", "summary"]

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

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
    )


def _get(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}; `corral devices` lists enrolled devices")
    return device


@router.get("", response_model=list[DeviceSummary])
def list_devices(_admin: AdminDep, session: SessionDep) -> list[DeviceSummary]:
    """Every enrolled device's summary, by id.

    Raises:
        AuthError: not the admin.
    """
    return [summary(d) for d in session.scalars(select(Device).order_by(Device.id))]


@router.get("/{device_id}", response_model=DeviceDetail)
def get_device(device_id: str, _admin: AdminDep, session: SessionDep) -> DeviceDetail:
    """One device: summary, last 50 events and seq accounting.

    Raises:
        AuthError: not the admin.
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
    """The device's desired model version; for that device's token or the admin.

    Raises:
        AuthError: a different device's token.
        NotFoundError: no such device.
    """
    if not caller.admin and caller.device_id != device_id:
        raise AuthError(f"a device token may read only its own desired version, not {device_id!r}")
    device = _get(session, device_id)
    return Desired(model=device.desired_model, version=device.desired_version)
