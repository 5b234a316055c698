"""The one place domain errors become HTTP answers.

=========================================  ====
``AuthError``                              403
``NotFoundError``                          404
``ConflictError``                          409
``InvalidInputError``, ``ContractError``   422
request validation (FastAPI)               422
``BlobStoreError``, ``SigningError``       503
``BusyError``                              503, with ``Retry-After``
``sqlalchemy.exc.DataError``               422 (a value the database cannot hold)
=========================================  ====

Every error answer is an RFC 9457 problem (``application/problem+json``)::

    {"type": "https://corral.dev/problems/conflict", "title": "Conflict",
     "status": 409, "detail": "<what happened and what to do>", "instance": "/api/v1/..."}

``detail`` is the message that says what to do; FastAPI's validation errors
are flattened into one such message, and its own 404/405 answers (an unknown
path or method) take the same form.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import ContractError, CorralError
from registry.errors import (
    AuthError,
    BlobStoreError,
    BusyError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)
from registry.signing import SigningError

__all__ = ["PROBLEM_BASE", "STATUS", "install_error_handlers", "problem", "status_for"]

STATUS: dict[type[CorralError], int] = {
    AuthError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    InvalidInputError: 422,
    ContractError: 422,
    BlobStoreError: 503,
    BusyError: 503,
    # The registry's keys cannot sign what the stored root demands: its operator's to fix.
    SigningError: 503,
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


_KINDS = {
    400: "bad-request",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    422: "invalid-input",
    500: "internal",
    503: "unavailable",
}
PROBLEM_BASE = "https://corral.dev/problems/"


def problem(request: Request, status: int, detail: str) -> JSONResponse:
    """An RFC 9457 problem answer."""
    kind = _KINDS.get(status)
    body = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorralError)
    response = problem(request, status_for(exc), str(exc))
    if isinstance(exc, BusyError):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such path {request.url.path}; the API is under /api/v1 (see /docs)"
    response = problem(request, exc.status_code, detail)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the request carried (PostgreSQL text cannot
    # hold NUL; a number out of the column's range): the caller's to fix. The
    # driver's first line says which; the statement and parameters stay out.
    assert isinstance(exc, DataError)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "invalid value"
    detail = (
        f"a value in the request cannot be stored: {reason}; "
        "remove NUL characters and keep numbers and text within their fields' limits"
    )
    return problem(request, 422, detail)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    detail = "invalid request: " + "; ".join(parts) + "; see docs/contracts.md for the shape"
    return problem(request, 422, detail)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``.

    Args:
        app: the FastAPI app.
    """
    app.add_exception_handler(RegistryError, _domain_error)
    app.add_exception_handler(ContractError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
