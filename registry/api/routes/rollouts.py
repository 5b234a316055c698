"""Rollouts (skeleton): set devices' desired version and hint it over MQTT.

Creating a rollout, in order: check the version and every device exist (404
otherwise, nothing changed); in one transaction set each device's desired
model and version, bump its desired-hint seq and record the rollout; after
the commit, publish each device's retained ``desired`` hint (QoS 1). The
database is the truth: an agent that missed the hint still finds its desired
version at ``GET /api/v1/devices/{id}/desired``. Stages, gates, pause and
rollback are a later issue.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select, update

from registry import audit
from registry._time import iso, utcnow
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.errors import ConflictError, NotFoundError
from registry.schemas import RolloutDeviceOut, RolloutOut, RolloutRequest
from registry.tables import Device, ModelVersion, Rollout, RolloutDevice

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


def _out(rollout: Rollout) -> RolloutOut:
    return RolloutOut(
        id=rollout.id,
        model=rollout.model,
        version=rollout.version,
        created_at=iso(rollout.created_at) or "",
        devices=[
            RolloutDeviceOut(
                device_id=rd.device.id,
                desired_model=rd.device.desired_model,
                desired_version=rd.device.desired_version,
                reported_model=rd.device.model,
                reported_version=rd.device.version,
                state=rd.device.state,
                done=(rd.device.model, rd.device.version) == (rollout.model, rollout.version),
            )
            for rd in sorted(rollout.devices, key=lambda rd: rd.device_id)
        ],
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RolloutOut)
def create_rollout(
    body: RolloutRequest, operator: OperatorDep, context: ContextDep, session: SessionDep
) -> RolloutOut:
    """Move devices (all when ``devices`` is null) to a model version.

    Revoked devices are left out of "all"; naming one is a conflict.

    Raises:
        AuthError: not an operator.
        NotFoundError: the version or a device does not exist.
        ConflictError: a named device is revoked.
    """
    version = session.scalar(
        select(ModelVersion.id).where(
            ModelVersion.name == body.model, ModelVersion.version == body.version
        )
    )
    if version is None:
        raise NotFoundError(
            f"no model {body.model} {body.version}; push it first (`corral model push`)"
        )
    if body.devices is None:
        active = select(Device).where(Device.revoked_at.is_(None)).order_by(Device.id)
        devices = list(session.scalars(active))
    else:
        wanted = sorted(set(body.devices))
        devices = list(session.scalars(select(Device).where(Device.id.in_(wanted))))
        if missing := sorted(set(wanted) - {d.id for d in devices}):
            raise NotFoundError(f"no enrolled device(s) {missing}; check the ids")
        if revoked := sorted(d.id for d in devices if d.revoked_at is not None):
            raise ConflictError(f"device(s) {revoked} are revoked; leave them out")
    ids = [d.id for d in devices]
    # One UPDATE bumps every seq, so two rollouts at once cannot hand out the same seq.
    session.execute(
        update(Device)
        .where(Device.id.in_(ids))
        .values(
            desired_model=body.model,
            desired_version=body.version,
            desired_seq=Device.desired_seq + 1,
        )
        .execution_options(synchronize_session="fetch")
    )
    rollout = Rollout(model=body.model, version=body.version, created_at=utcnow())
    for device in devices:
        session.refresh(device)
        rollout.devices.append(RolloutDevice(device=device, desired_seq=device.desired_seq))
    session.add(rollout)
    session.flush()
    audit.record(
        session,
        operator,
        "rollout.create",
        f"rollout:{rollout.id}",
        model=body.model,
        version=body.version,
        devices=ids,
    )
    session.commit()
    for device in devices:
        context.publish_desired(device.id, device.desired_seq, body.model, body.version)
    return _out(rollout)


@router.get("", response_model=list[RolloutOut])
def list_rollouts(_viewer: ViewerDep, session: SessionDep) -> list[RolloutOut]:
    """Every rollout, newest first.

    Raises:
        AuthError: not a viewer.
    """
    return [_out(r) for r in session.scalars(select(Rollout).order_by(Rollout.id.desc()))]


@router.get("/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: int, _viewer: ViewerDep, session: SessionDep) -> RolloutOut:
    """One rollout with each device's desired and reported version.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such rollout.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}; `corral rollout status` lists the newest")
    return _out(rollout)
