"""Errors of the registry, rooted by whose fault it is.

::

    CorralError (corral.errors)
    └── RegistryError
        ├── AuthError            no or wrong credentials for this action     → 403
        ├── NotFoundError        the named device, model or rollout is absent → 404
        ├── ConflictError        the request clashes with what is stored     → 409
        ├── InvalidInputError    the request is malformed                    → 422
        │   └── BlobMismatchError  an upload differs from its declared length or digest
        └── ConfigError          the registry's own settings are unusable (startup)

``corral.errors.ContractError`` (a bad bundle, payload or version) is also bad
input: the API maps it to 422. The mapping lives in ``registry.api.errors``.
"""

from __future__ import annotations

from corral.errors import CorralError

__all__ = [
    "AuthError",
    "BlobMismatchError",
    "ConfigError",
    "ConflictError",
    "InvalidInputError",
    "NotFoundError",
    "RegistryError",
]


class RegistryError(CorralError):
    """Base of every error the registry raises on purpose."""


class AuthError(RegistryError):
    """The caller's credentials are missing, wrong, or not allowed this action."""


class NotFoundError(RegistryError):
    """The device, model version, rollout or metadata named does not exist."""


class ConflictError(RegistryError):
    """The request clashes with stored state (a version or device id already exists)."""


class InvalidInputError(RegistryError):
    """The request is malformed."""


class BlobMismatchError(InvalidInputError):
    """An uploaded file's length or SHA-256 differs from what was declared for it."""


class ConfigError(RegistryError):
    """The registry's settings cannot be used (for example a default secret outside local mode)."""
