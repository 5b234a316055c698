"""The one place domain errors become HTTP answers.

=========================================  ====
``AuthError``                              403
``NotFoundError``                          404
``ConflictError``                          409
``InvalidInputError``, ``ContractError``   422
request validation (FastAPI)               422
``BlobStoreError``                         503
=========================================  ====

Every answer is ``{"detail": "<message>"}`` with a message that says what to
do; FastAPI's validation errors are flattened into one such message.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from corral.errors import ContractError, CorralError
from registry.errors import (
    AuthError,
    BlobStoreError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)

__all__ = ["STATUS", "install_error_handlers", "status_for"]

STATUS: dict[type[CorralError], int] = {
    AuthError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    InvalidInputError: 422,
    ContractError: 422,
    BlobStoreError: 503,
}


def status_for(error: CorralError) -> int:
    """The HTTP status of a domain error (500 for one with no mapping).

    Args:
        error: the error.

    Returns:
        The status code.
    """
    for kind, status in STATUS.items():
        if isinstance(error, kind):
            return status
    return 500


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorralError)
    return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    detail = "invalid request: " + "; ".join(parts) + "; see docs/contracts.md for the shape"
    return JSONResponse({"detail": detail}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``.

    Args:
        app: the FastAPI app.
    """
    app.add_exception_handler(RegistryError, _domain_error)
    app.add_exception_handler(ContractError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
