"""TUF metadata and targets, served without authentication in this skeleton.

Metadata is served byte for byte as signed. Targets are served by the
SHA-256 in their consistent-snapshot name (``.../{sha256}.{file}``) straight
from the blob store, as they are on disk: the agent's TUF client checks
length and hash and refuses a tampered blob. Per-device access control is a
later issue.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from registry.api.deps import ContextDep
from registry.errors import NotFoundError

__all__ = ["router"]

router = APIRouter(prefix="/tuf", tags=["tuf"])

_VERSIONED = re.compile(r"^([1-9][0-9]{0,9})\.(root|targets|snapshot)\.json$")
_UNVERSIONED = re.compile(r"^(root|timestamp)\.json$")
_HASHED = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9._-]+$")


@router.get("/metadata/{name}")
def metadata(name: str, context: ContextDep) -> Response:
    """``{N}.root.json``, ``{N}.targets.json``, ``{N}.snapshot.json``, ``timestamp.json``.

    Raises:
        NotFoundError: no such metadata (the TUF client reads 404 on the next root
            as "the root it has is the newest").
    """
    if match := _VERSIONED.match(name):
        data = context.tuf.metadata(match.group(2), int(match.group(1)))
    elif match := _UNVERSIONED.match(name):
        data = context.tuf.metadata(match.group(1))
    else:
        raise NotFoundError(f"no TUF metadata named {name!r}")
    return Response(data, media_type="application/json", headers={"Cache-Control": "no-cache"})


@router.get("/targets/{path:path}")
def target(path: str, context: ContextDep) -> FileResponse:
    """A target by its consistent-snapshot name ``.../{sha256}.{file}``.

    Raises:
        NotFoundError: the name has no digest prefix, or no such blob is stored.
    """
    match = _HASHED.match(path.rsplit("/", 1)[-1])
    if match is None or not context.blobs.exists(match.group(1)):
        raise NotFoundError(f"no target {path!r}; targets are named .../<sha256>.<file>")
    return FileResponse(context.blobs.path(match.group(1)), media_type="application/octet-stream")
