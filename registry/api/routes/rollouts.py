"""Rollouts: start one from a plan, watch it, approve, pause, resume or abort it.

The rules live in :mod:`registry.rollout`; these routes check roles, run one
engine operation in the request's transaction, record it in the audit log,
commit, and only then publish the desired hints the operation decided.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from fastapi import APIRouter, status
from sqlalchemy import select

from registry import audit
from registry._time import iso
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.errors import NotFoundError
from registry.rollout import RolloutPlan
from registry.schemas import (
    PROBLEM_RESPONSES,
    RolloutDeviceOut,
    RolloutLogOut,
    RolloutNote,
    RolloutOut,
    RolloutRequest,
    RolloutStageOut,
    RowId,
)
from registry.tables import Rollout

__all__ = ["rollout_out", "router"]

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"], responses=PROBLEM_RESPONSES)

_FAILED = ("failed", "timeout", "stuck")


def _stage_status(rollout: Rollout, index: int, decision: str | None) -> str:
    if index > rollout.stage:
        return "pending"
    if index < rollout.stage or rollout.state == "succeeded":
        return "passed"
    if decision == "fail":
        return "failed"
    if rollout.state == "waiting_approval":
        return "passed"
    return "active"


def rollout_out(rollout: Rollout) -> RolloutOut:
    """The API view of a rollout (also used by the console)."""
    plan = RolloutPlan.model_validate(rollout.plan)
    gates: dict[str, Any] = rollout.gates or {}
    stages = []
    for i, stage in enumerate(plan.stages):
        members = [rd for rd in rollout.devices if rd.stage == i]
        record = gates.get(str(i))
        stages.append(
            RolloutStageOut(
                index=i,
                name=stage.name,
                size=stage.size,
                devices=len(members),
                converged=sum(1 for rd in members if rd.state == "converged"),
                failed=sum(1 for rd in members if rd.state in _FAILED),
                status=_stage_status(rollout, i, record.get("decision") if record else None),
                gates=record,
            )
        )
    return RolloutOut(
        id=rollout.id,
        model=rollout.model,
        version=rollout.version,
        created_at=iso(rollout.created_at) or "",
        created_by=rollout.created_by,
        environment=rollout.environment,
        state=rollout.state,
        reason=rollout.reason,
        stage=rollout.stage,
        plan=rollout.plan,
        stages=stages,
        devices=[
            RolloutDeviceOut(
                device_id=rd.device.id,
                stage=rd.stage,
                progress=rd.state,
                previous_version=rd.previous_version,
                reason=rd.reason,
                desired_model=rd.device.desired_model,
                desired_version=rd.device.desired_version,
                reported_model=rd.device.model,
                reported_version=rd.device.version,
                state=rd.device.state,
                done=(rd.device.model, rd.device.version) == (rollout.model, rollout.version),
            )
            for rd in sorted(rollout.devices, key=lambda rd: (rd.stage, rd.device_id))
        ],
        log=[
            RolloutLogOut(
                at=iso(e.at) or "", actor=e.actor, action=e.action, message=e.message, data=e.data
            )
            for e in rollout.log
        ],
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RolloutOut)
def create_rollout(
    body: RolloutRequest, operator: OperatorDep, context: ContextDep, session: SessionDep
) -> RolloutOut:
    """Start a rollout from a plan (see ``RolloutRequest``).

    Raises:
        AuthError: not an operator.
        NotFoundError: the version or a named device does not exist.
        ConflictError: a named device is revoked, devices are in another active
            rollout, or a required staging rollout is missing.
        InvalidInputError: no device matches the selector.
    """
    plan, supersede = body.plan()
    rollout, hints = context.rollouts.create(session, plan, operator.name, supersede=supersede)
    audit.record(
        session,
        operator,
        "rollout.create",
        f"rollout:{rollout.id}",
        model=plan.model,
        version=plan.version,
        devices=[rd.device_id for rd in rollout.devices],
        stages=len(plan.stages),
        mode=plan.mode.value,
    )
    session.commit()
    context.rollouts.send(hints)
    return rollout_out(rollout)


@router.get("", response_model=list[RolloutOut])
def list_rollouts(_viewer: ViewerDep, session: SessionDep) -> list[RolloutOut]:
    """Every rollout, newest first.

    Raises:
        AuthError: not a viewer.
    """
    return [rollout_out(r) for r in session.scalars(select(Rollout).order_by(Rollout.id.desc()))]


@router.get("/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: RowId, _viewer: ViewerDep, session: SessionDep) -> RolloutOut:
    """One rollout with its stages, gate numbers, devices and decision log.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such rollout.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}; `corral rollout list` shows them")
    return rollout_out(rollout)


class RolloutAction(StrEnum):
    """What an operator can do to a rollout."""

    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


@router.post("/{rollout_id}/{action}", response_model=RolloutOut)
def act_on_rollout(
    rollout_id: RowId,
    action: RolloutAction,
    body: RolloutNote,
    operator: OperatorDep,
    context: ContextDep,
    session: SessionDep,
) -> RolloutOut:
    """``approve`` the stage a rollout waits at (or sign off a finished staging rollout),
    ``pause`` it (devices already installing finish), ``resume`` it, or ``abort`` it
    (every moved device goes back to the version it had). The note goes into the
    rollout's decision log and the audit log.

    Raises:
        AuthError: not an operator.
        NotFoundError: no such rollout.
        ConflictError: not possible in its state (e.g. nothing waits for approval).
    """
    engine = context.rollouts
    operations = {
        RolloutAction.APPROVE: engine.approve,
        RolloutAction.PAUSE: engine.pause,
        RolloutAction.RESUME: engine.resume,
        RolloutAction.ABORT: engine.abort,
    }
    rollout, hints = operations[action](session, rollout_id, operator.name, body.note)
    audit.record(
        session, operator, f"rollout.{action.value}", f"rollout:{rollout_id}", note=body.note
    )
    session.commit()
    engine.send(hints)
    return rollout_out(rollout)
