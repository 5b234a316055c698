"""The web console: one static page that polls ``/api/v1/devices``.

The page takes a token from ``#token=`` (or ``?token=``) once, keeps it in
sessionStorage and drops it from the address bar; real login is a later
issue. No external scripts or fonts: park networks and this build machine
have no internet.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["router"]

router = APIRouter(tags=["console"])


@cache
def _page() -> str:
    return resources.files("registry").joinpath("static/console.html").read_text("utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def console() -> HTMLResponse:
    """The fleet console."""
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})
