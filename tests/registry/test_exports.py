"""The registry package declares its public surface (as httpx's test_exported_members)."""

from __future__ import annotations

import types

import registry
from registry.api.errors import STATUS, status_for
from registry.errors import (
    AuthError,
    BlobMismatchError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)


def test_all_names_exist_and_nothing_else_leaks() -> None:
    exported = set(registry.__all__)
    assert all(hasattr(registry, name) for name in exported)
    public = {
        name
        for name, value in vars(registry).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == exported


def test_every_registry_error_has_an_http_status() -> None:
    leaves = {AuthError: 403, NotFoundError: 404, ConflictError: 409, InvalidInputError: 422}
    for kind, status in leaves.items():
        assert status_for(kind("x")) == status
    assert status_for(BlobMismatchError("x")) == 422
    # ConfigError: start-up settings; KeyFileError: only `corral keys`, never a request.
    not_served = ("ConfigError", "KeyFileError")
    http_errors = {k for k in RegistryError.__subclasses__() if k.__name__ not in not_served}
    assert http_errors <= set(STATUS)
