"""Who may do what: roles, callers, and how tokens are made and stored.

Three roles, each allowed what the one below it is (docs/registry.md has the
table)::

    admin     manage API tokens, enrolment tokens, revoke devices, read the audit log
      │
    operator  push models, start rollouts, move aliases, edit device site/group/tags
      │
    viewer    read devices, models, aliases, rollouts

The bootstrap admin token (``CORRAL_ADMIN_TOKEN`` or ``data-dir/admin-token``)
is the admin named ``admin``; API tokens are named by whoever creates them,
and that name is what the audit log records. A device token is no role at
all: it may read only its own desired version.

Tokens are 32 random bytes (URL-safe base64) shown once; only their SHA-256
is stored, so comparing digests is as safe as a constant-time compare.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ADMIN_NAME", "Caller", "Role", "hash_token", "new_token"]

#: The audit name of the bootstrap admin token; no API token may take it.
ADMIN_NAME = "admin"


class Role(StrEnum):
    """An API token's role; each allows everything the lesser ones do."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """0 for viewer, 1 for operator, 2 for admin."""
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Caller:
    """Who is calling: a person or CI (``role`` set) or one device (``device_id`` set).

    ``name`` is what the audit log records: the API token's name, ``admin``
    for the bootstrap token, ``device:<id>`` for a device.
    """

    name: str
    role: Role | None = None
    device_id: str | None = None

    @property
    def admin(self) -> bool:
        """Whether the caller holds the admin role."""
        return self.role is Role.ADMIN

    def allows(self, needed: Role) -> bool:
        """Whether the caller's role allows ``needed`` (a device has no role)."""
        return self.role is not None and self.role.allows(needed)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored.

    Args:
        token: the secret.

    Returns:
        64 hex digits.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)
