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

from registry._time import iso, utcnow
from registry.api.deps import AdminDep, ContextDep, SessionDep
from registry.errors import NotFoundError
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
    body: RolloutRequest, _admin: AdminDep, context: ContextDep, session: SessionDep
) -> RolloutOut:
    """Move devices (all when ``devices`` is null) to a model version.

    Raises:
        AuthError: not the admin.
        NotFoundError: the version or a device does not exist.
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
        devices = list(session.scalars(select(Device).order_by(Device.id)))
    else:
        wanted = sorted(set(body.devices))
        devices = list(session.scalars(select(Device).where(Device.id.in_(wanted))))
        if missing := sorted(set(wanted) - {d.id for d in devices}):
            raise NotFoundError(f"no enrolled device(s) {missing}; check the ids")
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
    session.commit()
    for device in devices:
        context.publish_desired(device.id, device.desired_seq, body.model, body.version)
    return _out(rollout)


@router.get("", response_model=list[RolloutOut])
def list_rollouts(_admin: AdminDep, session: SessionDep) -> list[RolloutOut]:
    """Every rollout, newest first.

    Raises:
        AuthError: not the admin.
    """
    return [_out(r) for r in session.scalars(select(Rollout).order_by(Rollout.id.desc()))]


@router.get("/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: int, _admin: AdminDep, session: SessionDep) -> RolloutOut:
    """One rollout with each device's desired and reported version.

    Raises:
        AuthError: not the admin.
        NotFoundError: no such rollout.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}; `corral rollout status` lists the newest")
    return _out(rollout)
