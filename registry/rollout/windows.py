"""A rollout's windows: what its devices reported on the new version and before it.

The gates (``registry.rollout.gates``) and experiments judge a version on
these. For each device the rollout sent and that converged: reports of the
new version since it settled, and reports of its previous version from
``baseline_s`` before the first of them moved until it moved; telemetry
counts on both sides whatever the version. The bundle's drift baseline gives
the class prior the new version was trained on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry._time import as_utc
from registry.rollout import gates
from registry.rollout.plan import RolloutPlan
from registry.tables import Message, ModelVersion, Rollout, RolloutDevice

__all__ = ["read_windows"]

# (device_id, kind, received_at, payload) of a messages row.
_Row = tuple[str, str, datetime, dict[str, Any]]


def read_windows(
    session: Session, rollout: Rollout, moved: list[RolloutDevice]
) -> tuple[gates.Windows, gates.Windows, dict[str, float] | None]:
    """(new version's windows, old version's windows, the bundle's class prior or None).

    Args:
        session: a database session.
        rollout: the rollout.
        moved: its devices that were sent to its version.

    Returns:
        The two windows and the class prior.
    """
    plan = RolloutPlan.model_validate(rollout.plan)
    new, old = gates.Windows(), gates.Windows()
    done = [rd for rd in moved if rd.state == "converged" and rd.moved_at is not None]
    if done:
        earliest = min(as_utc(rd.moved_at) for rd in done if rd.moved_at is not None)
        by_device = {rd.device_id: rd for rd in done}
        since = earliest - timedelta(seconds=plan.gates.baseline_s)
        rows = session.execute(
            select(Message.device_id, Message.kind, Message.received_at, Message.payload).where(
                Message.device_id.in_(list(by_device)),
                Message.kind.in_(("inference", "accuracy", "telemetry")),
                Message.received_at >= since,
            )
        ).all()
        for device_id, kind, received, payload in cast("list[_Row]", rows):
            rd = by_device[device_id]
            at = as_utc(received)
            version = payload.get("version")
            if rd.settled_at is not None and at >= as_utc(rd.settled_at):
                if kind == "telemetry" or version == rollout.version:
                    new.add(kind, payload)
            elif (
                rd.moved_at is not None
                and at < as_utc(rd.moved_at)
                and (kind == "telemetry" or version == rd.previous_version)
            ):
                old.add(kind, payload)
    bundle = session.scalar(
        select(ModelVersion.bundle).where(
            ModelVersion.name == rollout.model, ModelVersion.version == rollout.version
        )
    )
    prior = None
    if isinstance(bundle, dict):
        baseline = bundle.get("drift_baseline") or {}
        if isinstance(baseline.get("class_prior"), dict):
            prior = {str(k): float(v) for k, v in baseline["class_prior"].items()}
    return new, old, prior
