"""Enrolment: one-time, expiring tokens exchanged for per-device credentials.

The admin creates a token (shown once, stored as its SHA-256). An agent sends
it with its device id; in one transaction the token is marked used (only if
it still is unused and unexpired, so two racing uses cannot both win) and the
device is created with a fresh random token, of which again only the hash is
kept, and its hash in Mosquitto's format for the broker's password file
(``registry.broker``). The device starts with the site, group and tags the
token was made with. The answer carries what the agent needs from then on:
its token, the broker as agents reach it (``Settings.agent_broker``: with TLS,
the broker's CA certificate, so nobody copies it onto the park computer by
hand), and the TUF root it pins. Both steps are
written to the audit log in their own transaction (the enrolment as
``device:<id>``).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from fastapi import APIRouter, status
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from registry import audit
from registry._time import as_utc, iso, utcnow
from registry.api.deps import AdminDep, ContextDep, SessionDep, hash_token
from registry.broker import hash_password
from registry.errors import AuthError, ConflictError
from registry.schemas import (
    PROBLEM_RESPONSES,
    EnrolmentTokenRequest,
    EnrolmentTokenResponse,
    EnrolRequest,
    EnrolResponse,
    MqttEndpoint,
)
from registry.tables import Device, EnrolmentToken

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["enrolment"], responses=PROBLEM_RESPONSES)


@router.post(
    "/enrolment-tokens", status_code=status.HTTP_201_CREATED, response_model=EnrolmentTokenResponse
)
def create_enrolment_token(
    admin: AdminDep,
    context: ContextDep,
    session: SessionDep,
    body: EnrolmentTokenRequest | None = None,
) -> EnrolmentTokenResponse:
    """Create a one-time enrolment token, with the scope its device will get.

    Raises:
        AuthError: not an admin.
    """
    body = body or EnrolmentTokenRequest()
    ttl = body.ttl_s or context.settings.enrolment_ttl_s
    token = secrets.token_urlsafe(24)
    now = utcnow()
    row = EnrolmentToken(
        token_hash=hash_token(token),
        created_at=now,
        expires=now + timedelta(seconds=ttl),
        site=body.site,
        group=body.group,
        tags=body.tags,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        admin,
        "enrolment_token.create",
        f"enrolment-token:{row.id}",
        expires=iso(row.expires),
        site=body.site,
        group=body.group,
        tags=body.tags,
    )
    session.commit()
    return EnrolmentTokenResponse(token=token, expires=iso(row.expires) or "")


# Unset TLS fields are left out: the answer about a plain broker stays what it always was.
@router.post(
    "/enrol",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrolResponse,
    response_model_exclude_defaults=True,
)
def enrol(body: EnrolRequest, context: ContextDep, session: SessionDep) -> EnrolResponse:
    """Exchange an enrolment token for a device's credentials.

    Raises:
        AuthError: the token is unknown, used or expired.
        ConflictError: the device id is taken.
        ConfigError: the broker's CA file cannot be read (checked before the token is spent).
    """
    settings = context.settings
    # The agents' broker address, which may be a listener of their own (docs/broker.md).
    broker = settings.agent_broker()
    mqtt = MqttEndpoint(
        host=broker.host, port=broker.port, tls=broker.tls, ca_pem=settings.broker_ca_pem()
    )
    now = utcnow()
    row = session.scalar(
        select(EnrolmentToken).where(EnrolmentToken.token_hash == hash_token(body.token))
    )
    if row is None:
        raise AuthError("unknown enrolment token; ask the operator for a new one")
    if row.used_at is not None:
        raise AuthError("this enrolment token was already used; ask the operator for a new one")
    if as_utc(row.expires) <= now:
        raise AuthError(
            f"this enrolment token expired at {iso(row.expires)}; ask the operator for a new one"
        )
    if session.get(Device, body.device_id) is not None:
        raise ConflictError(
            f"device id {body.device_id!r} is already enrolled; pick another id "
            "or remove the old device first"
        )
    claimed = session.execute(
        update(EnrolmentToken)
        .where(EnrolmentToken.id == row.id, EnrolmentToken.used_at.is_(None))
        .values(used_at=now, device_id=body.device_id)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        session.rollback()
        raise AuthError("this enrolment token was already used; ask the operator for a new one")
    device_token = secrets.token_urlsafe(32)
    session.add(
        Device(
            id=body.device_id,
            token_hash=hash_token(device_token),
            mqtt_password_hash=hash_password(device_token),
            profile=body.profile,
            facts=body.facts,
            agent_version=body.agent_version,
            enrolled_at=now,
            site=row.site,
            group=row.group,
            tags=list(row.tags or []),
        )
    )
    audit.record(
        session,
        f"device:{body.device_id}",
        "device.enrol",
        body.device_id,
        enrolment_token=row.id,
        profile=body.profile,
        agent_version=body.agent_version,
        site=row.site,
        group=row.group,
        tags=list(row.tags or []),
    )
    try:
        session.commit()
    except IntegrityError as e:
        session.rollback()
        raise ConflictError(f"device id {body.device_id!r} is already enrolled") from e
    return EnrolResponse(
        device_id=body.device_id,
        device_token=device_token,
        mqtt=mqtt,
        tuf_root=context.tuf.root_dict(),
        metadata_url=settings.metadata_url,
        targets_url=settings.targets_url,
    )
