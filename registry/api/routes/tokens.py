"""API tokens for people and CI: created by an admin, shown once, revoked by name.

A token is stored as its SHA-256 with its name and role; the name is what the
audit log records for everything done with it. Names are unique forever
(a revoked token keeps its name, so the log stays unambiguous); ``admin`` is
the bootstrap token's and cannot be taken.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import audit
from registry._time import iso, utcnow
from registry.api.deps import AdminDep, SessionDep
from registry.core.security import ADMIN_NAME, Role, hash_token, new_token
from registry.errors import ConflictError, NotFoundError
from registry.schemas import PROBLEM_RESPONSES, ApiTokenCreated, ApiTokenOut, ApiTokenRequest
from registry.tables import ApiToken

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], responses=PROBLEM_RESPONSES)


def _out(row: ApiToken) -> ApiTokenOut:
    return ApiTokenOut(
        name=row.name,
        role=Role(row.role),
        created_at=iso(row.created_at) or "",
        created_by=row.created_by,
        revoked_at=iso(row.revoked_at),
    )


def _taken(name: str) -> ConflictError:
    return ConflictError(
        f"an API token named {name!r} exists (names are never reused, revoked or not); "
        "pick another name"
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiTokenCreated)
def create_token(body: ApiTokenRequest, admin: AdminDep, session: SessionDep) -> ApiTokenCreated:
    """Create a named API token with a role; the answer is the only time it is shown.

    Raises:
        AuthError: not an admin.
        ConflictError: the name is taken (or is ``admin``).
    """
    if body.name == ADMIN_NAME:
        raise _taken(body.name)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == body.name)) is not None:
        raise _taken(body.name)
    token = new_token()
    row = ApiToken(
        name=body.name,
        role=body.role.value,
        token_hash=hash_token(token),
        created_at=utcnow(),
        created_by=admin.name,
    )
    session.add(row)
    audit.record(session, admin, "api_token.create", body.name, role=body.role.value)
    try:
        session.commit()
    except IntegrityError as e:
        session.rollback()
        raise _taken(body.name) from e
    return ApiTokenCreated(**_out(row).model_dump(), token=token)


@router.get("", response_model=list[ApiTokenOut])
def list_tokens(_admin: AdminDep, session: SessionDep) -> list[ApiTokenOut]:
    """Every API token (revoked ones too), by name; never the secrets.

    Raises:
        AuthError: not an admin.
    """
    return [_out(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.name))]


def _get(session: Session, name: str) -> ApiToken:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise NotFoundError(f"no API token named {name!r}; `corral api-token list` shows them")
    return row


@router.post("/{name}/revoke", response_model=ApiTokenOut)
def revoke_token(name: str, admin: AdminDep, session: SessionDep) -> ApiTokenOut:
    """Revoke an API token at once; the row stays for the audit log.

    Raises:
        AuthError: not an admin.
        NotFoundError: no such token.
        ConflictError: it is revoked already.
    """
    row = _get(session, name)
    if row.revoked_at is not None:
        raise ConflictError(f"API token {name!r} was revoked at {iso(row.revoked_at)}")
    row.revoked_at = utcnow()
    audit.record(session, admin, "api_token.revoke", name, role=row.role)
    session.commit()
    return _out(row)
