"""Governance: the policies in force and what they did about alerts (registry.governance)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.governance import action_out
from registry.schemas import PROBLEM_RESPONSES, RowId
from registry.tables import PolicyAction

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["governance"], responses=PROBLEM_RESPONSES)


@router.get("/policies")
def list_policies(_viewer: ViewerDep, context: ContextDep) -> list[dict[str, Any]]:
    """The governance policies in force (from the registry's settings).

    Raises:
        AuthError: not a viewer.
    """
    return [p.model_dump(mode="json") for p in context.governance.policies]


@router.get("/actions")
def list_actions(
    _viewer: ViewerDep,
    session: SessionDep,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """What policies did or wait to do, newest first.

    Raises:
        AuthError: not a viewer.
    """
    query = select(PolicyAction).order_by(PolicyAction.id.desc()).limit(limit)
    if state is not None:
        query = query.where(PolicyAction.state == state)
    return [action_out(a) for a in session.scalars(query)]


@router.post("/actions/{action_id}/approve")
def approve_action(
    action_id: RowId, operator: OperatorDep, context: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Let a pending action run.

    Raises:
        AuthError: not an operator.
        NotFoundError: no such action.
        ConflictError: it is not pending.
    """
    return action_out(context.governance.approve(session, action_id, operator.name))
