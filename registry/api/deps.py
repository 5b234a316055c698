"""Dependencies of the routes, as ``Annotated`` aliases.

``SessionDep`` gives a database session closed after the request;
``AdminDep`` requires the admin token; ``CallerDep`` accepts the admin or a
device token and says which (a route then checks the device may see what it
asks for). Tokens travel as ``Authorization: Bearer <token>``; device tokens
are compared by their SHA-256, admin tokens in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.core.context import RegistryContext
from registry.errors import AuthError
from registry.tables import Device

__all__ = [
    "AdminDep",
    "Caller",
    "CallerDep",
    "ContextDep",
    "SessionDep",
    "hash_token",
]


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored.

    Args:
        token: the secret.

    Returns:
        64 hex digits.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def get_context(request: Request) -> RegistryContext:
    """The app's :class:`RegistryContext`."""
    context: RegistryContext = request.app.state.registry
    return context


ContextDep = Annotated[RegistryContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """A session for one request."""
    with context.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()


@dataclass(frozen=True)
class Caller:
    """Who is calling: the admin, or one device."""

    admin: bool
    device_id: str | None = None


def require_admin(
    context: ContextDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """Allow only the admin token.

    Raises:
        AuthError: no token, or not the admin token.
    """
    token = _bearer(authorization)
    if not hmac.compare_digest(token.encode(), context.admin_token.encode()):
        raise AuthError(
            "this needs the admin token; find it in the registry's data directory (admin-token)"
        )
    return Caller(admin=True)


def require_caller(
    context: ContextDep,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Caller:
    """Allow the admin token or any enrolled device's token.

    Raises:
        AuthError: no token, or one that is neither the admin's nor a device's.
    """
    token = _bearer(authorization)
    if hmac.compare_digest(token.encode(), context.admin_token.encode()):
        return Caller(admin=True)
    device_id = session.scalar(select(Device.id).where(Device.token_hash == hash_token(token)))
    if device_id is None:
        raise AuthError("unknown token; use the device token from enrolment or the admin token")
    return Caller(admin=False, device_id=device_id)


AdminDep = Annotated[Caller, Depends(require_admin)]
CallerDep = Annotated[Caller, Depends(require_caller)]
