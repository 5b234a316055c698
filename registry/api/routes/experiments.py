"""A/B experiments: split a selection between two versions, compare (registry.rollout.ab)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from registry import audit
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.rollout import experiments
from registry.schemas import PROBLEM_RESPONSES, ExperimentRequest

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/experiments", tags=["rollouts"], responses=PROBLEM_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED)
def start_experiment(
    body: ExperimentRequest, operator: OperatorDep, context: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Move cohort A of the selection to version ``a`` and cohort B to ``b``, at once.

    Raises:
        AuthError: not an operator.
        NotFoundError: a version or a named device does not exist.
        ConflictError: the name is taken.
        InvalidInputError: a cohort would be empty.
    """
    a, b, hints = experiments.start(
        context.rollouts,
        session,
        body.name,
        body.model,
        (body.a, body.b),
        body.selector,
        body.split,
        operator.name,
    )
    audit.record(
        session,
        operator,
        "experiment.start",
        f"experiment:{body.name}",
        model=body.model,
        a=body.a,
        b=body.b,
        rollouts=[a.id, b.id],
    )
    session.commit()
    context.rollouts.send(hints)
    return experiments.describe(session, body.name)


@router.get("/{name}")
def get_experiment(
    name: str, _viewer: ViewerDep, context: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Both cohorts' figures and B - A for accuracy and p95 latency with 95 % intervals.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such experiment.
    """
    return experiments.describe(session, name)
