"""TUF metadata, targets and the signed time.

Metadata is public and served byte for byte as signed (it is signed, not
secret). Targets are served by the SHA-256 in their consistent-snapshot name
(``models/{model}/{version}/{sha256}.{file}``) straight from the blob store
(local or S3), as they are stored: the agent's TUF client checks length and
hash and refuses a tampered blob. Targets need a token: a device may download
only the version it is assigned (its desired version, which is also where a
rollback sends it, or the candidate of its shadow trial) or the one it runs,
if a rollout once assigned it that one (what a device reports running is its
own say-so); and only that version's files, by their own digests (the digest
in the name picks the blob, so a device must not fetch another version's blob
under a path it may use). People and CI need the viewer role.

Targets are streamed from the blob store and resumable (RFC 9110):

- ``ETag`` is the strong validator ``"<sha256>"`` (the content's name);
  ``If-None-Match`` naming it (or ``*``) answers 304;
- one ``Range: bytes=N-M`` / ``bytes=N-`` / ``bytes=-S`` answers 206 with
  ``Content-Range``; a range that starts past the end answers 416 with
  ``Content-Range: bytes */<length>``; several ranges, or a malformed one, are
  ignored and the whole file is sent (200), as the RFC allows;
- ``If-Range`` that is not the ETag (a date, or another ETag) sends the
  whole file (200): the agent then starts its partial file over.

``GET /tuf/time?nonce=...`` answers the registry's current time with the
caller's nonce, signed by the timestamp key root names (the Uptane time-server
idea, :mod:`corral.signedtime`): agents use it, not their own clock, to decide
whether metadata has expired.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.bundle import BUNDLE_FILE
from corral.signedtime import NONCE_PATTERN
from registry.api.deps import CallerDep, ContextDep, SessionDep
from registry.core.security import Caller, Role
from registry.errors import AuthError, NotFoundError
from registry.schemas import PROBLEM_RESPONSES
from registry.tables import Device, ModelVersion, Rollout, RolloutDevice

__all__ = ["router"]

router = APIRouter(prefix="/tuf", tags=["tuf"], responses=PROBLEM_RESPONSES)

_VERSIONED = re.compile(r"^([1-9][0-9]{0,9})\.(root|targets|snapshot)\.json$")
_UNVERSIONED = re.compile(r"^(root|timestamp)\.json$")
_HASHED = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9._-]+$")
_RANGE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")


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


@router.get("/time")
def signed_time(
    context: ContextDep,
    nonce: Annotated[
        str,
        Query(
            pattern=NONCE_PATTERN,
            description="A fresh random value, 16-128 of A-Z a-z 0-9 _ -, echoed back.",
        ),
    ],
) -> Response:
    """The registry's current time and ``nonce``, signed by the timestamp key.

    Raises:
        SignedTimeError: the nonce is malformed (422).
    """
    return Response(
        context.tuf.signed_time(nonce),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _parse_range(header: str, length: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, clipped to ``length``.

    Returns:
        The range, or ``None`` when the header is not one well-formed range
        (then the whole file is served).

    Raises:
        RangeNotSatisfiableError: the range starts at or past the end.
    """
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0:
            raise _RangeNotSatisfiableError
        return max(0, length - suffix), length - 1
    start = int(first)
    end = length - 1 if last == "" else min(int(last), length - 1)
    if last != "" and int(last) < start:
        return None  # syntactically invalid: ignore it
    if start >= length:
        raise _RangeNotSatisfiableError
    return start, end


class _RangeNotSatisfiableError(Exception):
    """The requested range lies outside the file."""


def _was_assigned(session: Session, device_id: str, model: str, version: str) -> bool:
    """Whether a rollout ever moved ``device_id`` to ``model`` ``version``."""
    moved = (
        select(RolloutDevice.id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(
            RolloutDevice.device_id == device_id,
            RolloutDevice.moved_at.is_not(None),
            Rollout.model == model,
            Rollout.version == version,
        )
        .limit(1)
    )
    return session.scalar(moved) is not None


def _is_file_of(session: Session, model: str, version: str, leaf: str) -> bool:
    """Whether ``leaf`` (``<sha256>.<file>``) is a file of ``model`` ``version`` by its digest."""
    digest, _, name = leaf.partition(".")
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.name == model, ModelVersion.version == version)
    )
    if row is None:
        return False
    if name == BUNDLE_FILE:
        return digest == row.bundle_sha256
    return any(f.name == name and f.sha256 == digest for f in row.files)


def _check_assigned(caller: Caller, session: Session, path: str) -> None:
    if caller.device_id is None:
        if not caller.allows(Role.VIEWER):
            raise AuthError(f"{caller.name!r} may not download targets; it needs the viewer role")
        return
    parts = path.split("/")
    device = session.get(Device, caller.device_id)
    if len(parts) != 4 or parts[0] != "models" or device is None:
        raise AuthError(f"device {caller.device_id} may download only model files")
    wanted = (parts[1], parts[2])
    # What a device reports running comes from its own status messages: it counts
    # only if a rollout once moved the device there, or a device could name any
    # version as "running" over MQTT and then download it.
    runs = wanted == (device.model, device.version) and _was_assigned(session, device.id, *wanted)
    assigned = {
        (device.desired_model, device.desired_version),
        (device.shadow_model, device.shadow_version),  # a shadow trial's candidate
    }
    if wanted not in assigned and not runs:
        raise AuthError(
            f"device {device.id} is not assigned {wanted[0]} {wanted[1]} (it should run "
            f"{device.desired_model} {device.desired_version}); a rollout assigns versions"
        )
    if not _is_file_of(session, wanted[0], wanted[1], parts[3]):
        raise AuthError(
            f"device {device.id} may download only the files of {wanted[0]} {wanted[1]}, by "
            f"the digests its signed targets give; {parts[3][:76]!r} is not one of them"
        )


@router.get("/targets/{path:path}")
def target(
    path: str,
    context: ContextDep,
    caller: CallerDep,
    session: SessionDep,
    range_: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """A target by its consistent-snapshot name ``.../{sha256}.{file}``, resumable.

    Raises:
        AuthError: no token; a device asking for a version it is not assigned; a
            person without the viewer role.
        NotFoundError: the name has no digest prefix, or no such blob is stored.
    """
    _check_assigned(caller, session, path)
    match = _HASHED.match(path.rsplit("/", 1)[-1])
    missing = NotFoundError(f"no target {path!r}; targets are named .../<sha256>.<file>")
    if match is None:
        raise missing
    digest = match.group(1)
    try:
        length = context.blobs.length(digest)
    except NotFoundError as e:
        raise missing from e
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, immutable"}
    if if_none_match is not None and (
        if_none_match.strip() == "*" or etag in (t.strip() for t in if_none_match.split(","))
    ):
        return Response(status_code=304, headers=headers)
    wanted: tuple[int, int] | None = None
    if range_ is not None and (if_range is None or if_range.strip() == etag):
        try:
            wanted = _parse_range(range_, length)
        except _RangeNotSatisfiableError:
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{length}"}
            )
    if wanted is None:
        start, end, status = 0, length - 1, 200
    else:
        (start, end), status = wanted, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{length}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(
        context.blobs.read(digest, start, end),
        status_code=status,
        media_type="application/octet-stream",
        headers=headers,
    )
