"""The audit log, newest first, for admins (``registry.audit`` writes it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from registry.api.deps import AdminDep, SessionDep
from registry.schemas import MAX_ID, PROBLEM_RESPONSES, AuditEntryOut
from registry.tables import AuditEntry

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=list[AuditEntryOut])
def list_audit(
    _admin: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only entries with a smaller id.")
    ] = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[AuditEntryOut]:
    """Audit entries, newest first; page back with ``before`` = the last id seen.

    Raises:
        AuthError: not an admin.
    """
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    return [AuditEntryOut.of(e) for e in session.scalars(query)]
