"""Errors of the registry, rooted by whose fault it is.

::

    CorralError (corral.errors)
    └── RegistryError
        ├── AuthError            no or wrong credentials for this action     → 403
        ├── NotFoundError        the named device, model or rollout is absent → 404
        ├── ConflictError        the request clashes with what is stored     → 409
        ├── InvalidInputError    the request is malformed                    → 422
        │   └── BlobMismatchError  an upload differs from its declared length or digest
        ├── ConfigError          the registry's own settings are unusable (startup)
        ├── BlobStoreError       the object store cannot be reached or refused us    → 503
        └── BusyError            too many requests at once; retry after a while      → 503

``corral.errors.ContractError`` (a bad bundle, payload or version) is also bad
input: the API maps it to 422. The mapping lives in ``registry.api.errors``.
"""

from __future__ import annotations

from corral.errors import CorralError

__all__ = [
    "AuthError",
    "BlobMismatchError",
    "BlobStoreError",
    "BusyError",
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


class BlobStoreError(RegistryError):
    """The blob store (an S3-compatible service) cannot be reached or refused a request.

    Not the caller's fault: the request may succeed later, or once the store's
    address, bucket or credentials are put right.
    """


class BusyError(RegistryError):
    """The registry is serving as many requests as it may; this one should come back later.

    Not the caller's fault. ``retry_after_s`` is sent as ``Retry-After``.
    """

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
