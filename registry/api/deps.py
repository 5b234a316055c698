"""Dependencies of the routes, as ``Annotated`` aliases.

``SessionDep`` gives a database session once the request is admitted
(``registry.api.admission``), closed when the answer is built.
``ViewerDep``, ``OperatorDep`` and ``AdminDep`` require an API token whose
role allows at least that much (``registry.core.security`` has the roles);
``CallerDep`` accepts any valid token, a device's included, and says who it
is (a route then checks the device may see what it asks for).

Tokens travel as ``Authorization: Bearer <token>``. A token is tried, in
order, as the bootstrap admin token (constant-time compare), as an API token,
then as a device token, the last two by SHA-256. A revoked API or device
token is refused with a message that says so. A device enrolled before
broker credentials existed gets its broker password hash here, the first
time its token is seen (``registry.broker.remember_credential``).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.api.admission import Admission
from registry.broker import remember_credential
from registry.core.context import RegistryContext
from registry.core.security import ADMIN_NAME, Caller, Role, hash_token
from registry.errors import AuthError
from registry.tables import ApiToken, Device

__all__ = [
    "AdminDep",
    "Caller",
    "CallerDep",
    "ContextDep",
    "OperatorDep",
    "SessionDep",
    "ViewerDep",
    "hash_token",
]


def get_context(request: Request) -> RegistryContext:
    """The app's :class:`RegistryContext`."""
    context: RegistryContext = request.app.state.registry
    return context


ContextDep = Annotated[RegistryContext, Depends(get_context)]


async def admitted(request: Request) -> AsyncIterator[None]:
    """Wait for this request's turn at the database (registry.api.admission).

    Raises:
        BusyError: no turn came within the registry's ``request_wait_s`` (503).
    """
    admission: Admission = request.app.state.admission
    async with admission.turn():
        yield


def get_session(
    context: ContextDep, _turn: Annotated[None, Depends(admitted, scope="function")]
) -> Iterator[Session]:
    """A session for one request, once it is admitted; closed when the answer is built."""
    with context.sessions() as session:
        yield session


# "function": closed, and the turn given back, before the body is sent (a slow
# download holds neither), not after.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()


def identify(context: RegistryContext, session: Session, token: str) -> Caller:
    """Who holds ``token``.

    Args:
        context: the registry (for the bootstrap admin token).
        session: a database session.
        token: the bearer token.

    Returns:
        The caller.

    Raises:
        AuthError: the token is unknown or revoked.
    """
    if hmac.compare_digest(token.encode(), context.admin_token.encode()):
        return Caller(ADMIN_NAME, Role.ADMIN)
    digest = hash_token(token)
    api = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if api is not None:
        if api.revoked_at is not None:
            raise AuthError(f"API token {api.name!r} was revoked; ask an admin for a new one")
        return Caller(api.name, Role(api.role))
    device = session.scalar(select(Device).where(Device.token_hash == digest))
    if device is not None:
        if device.revoked_at is not None:
            raise AuthError(f"device {device.id!r} was revoked; enrol it again with a new id")
        if remember_credential(device, token):
            session.commit()  # enrolled before broker credentials: now it has one
        return Caller(f"device:{device.id}", device_id=device.id)
    raise AuthError(
        "unknown token; use an API token (`corral api-token create`), the admin token "
        "or a device token from enrolment"
    )


def require_caller(
    context: ContextDep,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Caller:
    """Allow any valid token: an API token, the admin token or a device token.

    Raises:
        AuthError: no token, or an unknown or revoked one.
    """
    return identify(context, session, _bearer(authorization))


def _require(needed: Role) -> Callable[..., Caller]:
    def dependency(
        context: ContextDep,
        session: SessionDep,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        caller = identify(context, session, _bearer(authorization))
        if not caller.allows(needed):
            held = f"role {caller.role.value}" if caller.role else "a device token"
            raise AuthError(
                f"this needs the {needed.value} role and {caller.name!r} holds {held}; "
                f"ask an admin for a token with it (`corral api-token create --role {needed}`); "
                "the admin token is in the registry's data directory (admin-token)"
            )
        return caller

    dependency.__name__ = f"require_{needed.value}"
    return dependency


CallerDep = Annotated[Caller, Depends(require_caller)]
ViewerDep = Annotated[Caller, Depends(_require(Role.VIEWER))]
OperatorDep = Annotated[Caller, Depends(_require(Role.OPERATOR))]
AdminDep = Annotated[Caller, Depends(_require(Role.ADMIN))]
