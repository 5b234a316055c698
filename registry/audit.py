"""The audit log: one row per state change, written in the change's own transaction.

A route calls :func:`record` before it commits, so a change and its audit
row appear together or not at all. ``actor`` is the caller's name (an API
token's name, ``admin`` for the bootstrap token, ``device:<id>`` for an
enrolling device). ``details`` must never hold a secret: pass names, ids,
versions and reasons, never token values (``test_audit`` checks).

Actions, as ``<resource>.<verb>``:

==========================  ==========================  =========================
action                      target                      details
==========================  ==========================  =========================
``api_token.create``        the token's name            ``role``
``api_token.revoke``        the token's name            ``role``
``enrolment_token.create``  ``enrolment-token:<id>``    ``expires``, scope
``device.enrol``            the device id               ``profile``, scope
``device.update``           the device id               changed fields
``device.revoke``           the device id               ``reason``
``model.push``              ``<name>/<version>``        ``files``, ``bundle_sha256``
``model.variant``           ``<name>/<version>``        ``variant``, ``file``, ``sha256``,
                                                        ``bundle_sha256``
``rollout.create``          ``rollout:<id>``            ``model``, ``version``, ``devices``
``alias.move``              ``<name>/<alias>``          ``from``, ``to``, ``reason``
==========================  ==========================  =========================
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from registry._time import utcnow
from registry.core.security import Caller
from registry.tables import AuditEntry

__all__ = ["record"]


def record(session: Session, who: Caller | str, action: str, target: str, **details: Any) -> None:
    """Add an audit row to ``session``; it is stored when the caller commits.

    Args:
        session: the session that holds the change.
        who: the caller, or an actor name.
        action: ``<resource>.<verb>`` (the table above).
        target: what was changed.
        **details: JSON-able facts about the change; never a secret.
    """
    actor = who if isinstance(who, str) else who.name
    session.add(AuditEntry(at=utcnow(), actor=actor, action=action, target=target, details=details))
