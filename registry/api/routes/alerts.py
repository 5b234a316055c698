"""Alerts, silences, and a device's quality over a sliding window (registry.alerts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from registry import audit
from registry._time import iso, utcnow
from registry.alerts import alert_out, drift
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.errors import ConflictError, NotFoundError
from registry.schemas import PROBLEM_RESPONSES, RowId
from registry.tables import Alert, Device, ModelVersion, Silence

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=PROBLEM_RESPONSES)


class AckRequest(BaseModel):
    """Body of ``POST /api/v1/alerts/{id}/ack``."""

    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=500)


class SilenceRequest(BaseModel):
    """Body of ``POST /api/v1/silences``: mute a rule, a subject, or both, for a while."""

    model_config = ConfigDict(extra="forbid")
    rule: str | None = Field(default=None, max_length=40)
    subject: str | None = Field(
        default=None, max_length=200, description="Exact, or a prefix ending in '*'."
    )
    duration_s: float = Field(gt=0, le=30 * 24 * 3600)
    reason: str = Field(min_length=1, max_length=500)


def _silence_out(s: Silence) -> dict[str, Any]:
    return {
        "id": s.id,
        "rule": s.rule,
        "subject": s.subject,
        "reason": s.reason,
        "created_by": s.created_by,
        "created_at": iso(s.created_at),
        "expires_at": iso(s.expires_at),
    }


@router.get("/alerts")
def list_alerts(
    _viewer: ViewerDep,
    session: SessionDep,
    state: Annotated[str, Query(pattern="^(firing|resolved|all)$")] = "firing",
    rule: str | None = None,
    subject: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Alerts, newest first: firing ones by default.

    Raises:
        AuthError: not a viewer.
    """
    query = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if state == "firing":
        query = query.where(Alert.resolved_at.is_(None))
    elif state == "resolved":
        query = query.where(Alert.resolved_at.is_not(None))
    if rule is not None:
        query = query.where(Alert.rule == rule)
    if subject is not None:
        query = query.where(Alert.subject == subject)
    return [alert_out(a) for a in session.scalars(query)]


@router.post("/alerts/{alert_id}/ack")
def acknowledge_alert(
    alert_id: RowId, body: AckRequest, operator: OperatorDep, session: SessionDep
) -> dict[str, Any]:
    """Record that someone is on it (the alert keeps firing until its rule stops holding).

    Raises:
        AuthError: not an operator.
        NotFoundError: no such alert.
        ConflictError: already acknowledged.
    """
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFoundError(f"no alert {alert_id}; `corral alerts` lists the firing ones")
    if alert.acknowledged_at is not None:
        raise ConflictError(f"alert {alert_id} was acknowledged by {alert.acknowledged_by}")
    alert.acknowledged_at, alert.acknowledged_by = utcnow(), operator.name
    audit.record(
        session,
        operator,
        "alert.ack",
        f"alert:{alert_id}",
        note=body.note,
        rule=alert.rule,
        subject=alert.subject,
    )
    session.commit()
    return alert_out(alert)


@router.get("/silences")
def list_silences(_viewer: ViewerDep, session: SessionDep) -> list[dict[str, Any]]:
    """Active silences.

    Raises:
        AuthError: not a viewer.
    """
    rows = session.scalars(select(Silence).where(Silence.expires_at > utcnow()))
    return [_silence_out(s) for s in rows]


@router.post("/silences", status_code=status.HTTP_201_CREATED)
def create_silence(
    body: SilenceRequest, operator: OperatorDep, session: SessionDep
) -> dict[str, Any]:
    """Mute matching alerts (still recorded, not delivered) until it expires.

    Raises:
        AuthError: not an operator.
    """
    now = utcnow()
    silence = Silence(
        rule=body.rule,
        subject=body.subject,
        reason=body.reason,
        created_by=operator.name,
        created_at=now,
        expires_at=now + timedelta(seconds=body.duration_s),
    )
    session.add(silence)
    session.flush()
    audit.record(
        session,
        operator,
        "silence.create",
        f"silence:{silence.id}",
        rule=body.rule,
        subject=body.subject,
        reason=body.reason,
        duration_s=body.duration_s,
    )
    session.commit()
    return _silence_out(silence)


@router.delete("/silences/{silence_id}")
def end_silence(silence_id: RowId, operator: OperatorDep, session: SessionDep) -> dict[str, Any]:
    """End a silence now.

    Raises:
        AuthError: not an operator.
        NotFoundError: no such silence.
    """
    silence = session.get(Silence, silence_id)
    if silence is None:
        raise NotFoundError(f"no silence {silence_id}; `corral alerts silences` lists them")
    silence.expires_at = utcnow()
    audit.record(session, operator, "silence.end", f"silence:{silence_id}")
    session.commit()
    return _silence_out(silence)


@router.get("/devices/{device_id}/quality")
def device_quality(
    device_id: str,
    _viewer: ViewerDep,
    context: ContextDep,
    session: SessionDep,
    window_s: Annotated[float, Query(gt=0, le=7 * 24 * 3600)] = 300.0,
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 with label counts, recall gap and drift tests
    of a device's current version over the last ``window_s``.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such device.
    """
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id}; `corral devices` lists them")
    engine = context.alerts
    rules = engine.rules.model_copy(update={"window_s": window_s})
    window = type(engine)(engine.sessions, rules).windows(session, [device], utcnow())[device_id]
    out = window.summary(rules.min_class_support)
    bundle = session.scalar(
        select(ModelVersion.bundle).where(
            ModelVersion.name == device.model, ModelVersion.version == device.version
        )
    )
    baseline = (bundle or {}).get("drift_baseline") if isinstance(bundle, dict) else None
    out["window_s"] = window_s
    out["drift"] = [
        d.to_dict()
        for d in drift(
            window,
            baseline or {},
            rules.drift_frames_per_sample,
            rules.drift_large_n,
            rules.drift_max_js,
            rules.drift_max_psi,
        )
    ]
    return out
