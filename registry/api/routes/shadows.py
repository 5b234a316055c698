"""Shadow trials: run a candidate beside the current model, compare (registry.rollout.shadow)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from registry import audit
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.rollout import shadow
from registry.schemas import PROBLEM_RESPONSES, ShadowRequest

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/shadows", tags=["rollouts"], responses=PROBLEM_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED)
def start_shadow(
    body: ShadowRequest, operator: OperatorDep, context: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Run ``model`` ``version`` in shadow on the selected devices; what they run is unchanged.

    Raises:
        AuthError: not an operator.
        NotFoundError: no such version, or a named device is not enrolled.
        ConflictError: the name is taken, or a device already runs a candidate in shadow.
        InvalidInputError: the selection is empty.
    """
    trial, hints = shadow.start(
        session, body.name, body.model, body.version, body.selector, operator.name
    )
    audit.record(
        session,
        operator,
        "shadow.start",
        f"shadow:{body.name}",
        model=body.model,
        version=body.version,
        devices=len(trial.devices),
    )
    session.commit()
    context.rollouts.send(hints)
    return shadow.report(session, body.name)


@router.get("")
def list_shadows(_viewer: ViewerDep, session: SessionDep) -> list[dict[str, Any]]:
    """Every shadow trial, newest first (figures: ``GET /api/v1/shadows/{name}``).

    Raises:
        AuthError: not a viewer.
    """
    return shadow.trials(session)


@router.get("/{name}")
def get_shadow(name: str, _viewer: ViewerDep, session: SessionDep) -> dict[str, Any]:
    """Agreement, the candidate's latency cost and paired accuracy, overall and per device.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such trial.
    """
    return shadow.report(session, name)


@router.post("/{name}/stop")
def stop_shadow(
    name: str, operator: OperatorDep, context: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Stop the trial: its devices drop the candidate; the figures stay.

    Raises:
        AuthError: not an operator.
        NotFoundError: no such trial.
        ConflictError: it is already stopped.
    """
    trial, hints = shadow.stop(session, name, operator.name)
    audit.record(session, operator, "shadow.stop", f"shadow:{name}", devices=len(hints))
    session.commit()
    context.rollouts.send(hints)
    return shadow.report(session, trial.name)
