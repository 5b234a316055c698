"""Content-addressed blob stores: the interface, and the local one (``blobs/ab/<sha256>``).

``BlobStorage`` is what the routes use: ``put`` (hashing as it stores),
``exists``, ``length`` and ``read`` (a byte range, streamed in chunks of at
most a MiB). ``BlobStore`` keeps blobs on the local filesystem;
``registry.s3blobs.S3BlobStore`` in an S3-compatible bucket
(``CORRAL_BLOB_STORE=s3``).

Writing streams into a temporary file beside the blobs while hashing, checks
the declared length and digest, fsyncs, and only then moves the file into
place with ``os.replace``. A blob that already exists is never overwritten:
the same digest means the same bytes, and the file on disk stays what it is.

Reading hands out the file as it is on disk; nothing re-verifies it here. The
TUF client on the agent is the one that refuses a tampered blob.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from registry.errors import BlobMismatchError, NotFoundError

__all__ = ["MAX_BLOB", "BlobInfo", "BlobStorage", "BlobStore", "check_digest", "spool"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: The longest blob ``put`` accepts unless told otherwise.
MAX_BLOB = 8 << 30


@dataclass(frozen=True)
class BlobInfo:
    """What was stored: the digest and the length."""

    sha256: str
    length: int


class BlobStorage(Protocol):
    """What the registry needs of a blob store; every method may raise ``RegistryError``."""

    def put(
        self,
        stream: BinaryIO,
        *,
        expected_sha256: str | None = None,
        expected_length: int | None = None,
        max_length: int = MAX_BLOB,
        name: str = "upload",
    ) -> BlobInfo:
        """Store what ``stream`` yields under its SHA-256 (see :meth:`BlobStore.put`)."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        ...

    def length(self, sha256: str) -> int:
        """The blob's length in bytes; ``NotFoundError`` when absent."""
        ...

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; None: the last) in chunks.

        The blob is opened before this returns, so absence raises here, not
        while the caller is already streaming a response.
        """
        ...


def check_digest(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lowercase hex digits.

    Raises:
        NotFoundError: it is not (no blob can have that name).
    """
    if not _HEX64.match(sha256):
        raise NotFoundError(f"{sha256!r:.80} is not a SHA-256 hex digest")
    return sha256


def spool(
    stream: BinaryIO,
    directory: Path,
    *,
    expected_sha256: str | None = None,
    expected_length: int | None = None,
    max_length: int = MAX_BLOB,
    name: str = "upload",
) -> tuple[Path, BlobInfo]:
    """Copy ``stream`` into a new temporary file in ``directory``, hashing and checking it.

    Args:
        stream: a binary stream read to its end.
        directory: where the temporary file goes.
        expected_sha256: the digest it must have, if known.
        expected_length: the length it must have, if known.
        max_length: refuse anything longer.
        name: how error messages call it.

    Returns:
        The temporary file (fsynced; the caller moves or deletes it) and what it holds.

    Raises:
        BlobMismatchError: the data is longer than allowed, or its length or
            digest differs from the expected one (the temporary file is gone).
    """
    limit = max_length if expected_length is None else min(max_length, expected_length)
    digest = hashlib.sha256()
    length = 0
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix="put-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                length += len(chunk)
                if length > limit:
                    raise BlobMismatchError(
                        f"{name}: more than the {limit} bytes declared; "
                        "check bundle.json lists the right length"
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        if expected_length is not None and length != expected_length:
            raise BlobMismatchError(
                f"{name}: expected {expected_length} bytes as bundle.json says, got {length}"
            )
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise BlobMismatchError(
                f"{name}: SHA-256 {sha256[:12]}… differs from bundle.json's "
                f"{expected_sha256[:12]}…; rebuild the bundle or upload the right file"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, BlobInfo(sha256, length)


class BlobStore:
    """Blobs under ``root``, named by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob with ``sha256`` lives (it may not exist).

        Raises:
            NotFoundError: ``sha256`` is not 64 lowercase hex digits.
        """
        check_digest(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        try:
            return self.path(sha256).is_file()
        except NotFoundError:
            return False

    def put(
        self,
        stream: BinaryIO,
        *,
        expected_sha256: str | None = None,
        expected_length: int | None = None,
        max_length: int = MAX_BLOB,
        name: str = "upload",
    ) -> BlobInfo:
        """Store what ``stream`` yields, checking it against what was declared.

        Args:
            stream: a binary stream read to its end.
            expected_sha256: the digest it must have, if known.
            expected_length: the length it must have, if known.
            max_length: refuse anything longer.
            name: how error messages call it.

        Returns:
            The digest and length stored.

        Raises:
            BlobMismatchError: the data is longer than allowed, or its length or
                digest differs from the expected one.
        """
        tmp, info = spool(
            stream,
            self._tmp,
            expected_sha256=expected_sha256,
            expected_length=expected_length,
            max_length=max_length,
            name=name,
        )
        try:
            final = self.path(info.sha256)
            if final.exists():
                return info  # same digest, same bytes: never overwrite
            final.parent.mkdir(exist_ok=True)
            tmp.replace(final)
            _fsync_dir(final.parent)
            return info
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, sha256: str) -> BinaryIO:
        """Open the blob for reading, as it is on disk.

        Raises:
            NotFoundError: no such blob.
        """
        path = self.path(sha256)
        try:
            return path.open("rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"no blob with SHA-256 {sha256}") from e

    def length(self, sha256: str) -> int:
        """The blob's length in bytes.

        Raises:
            NotFoundError: no such blob.
        """
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as e:
            raise NotFoundError(f"no blob with SHA-256 {sha256}") from e

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; None: the last), in chunks of up to a MiB.

        Raises:
            NotFoundError: no such blob (raised here, before any byte is yielded).
        """
        return _chunks(self.open(sha256), start, end)


def _chunks(handle: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = None if end is None else end - start + 1
        while left is None or left > 0:
            chunk = handle.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                return  # the blob shrank under us: the client sees a short body
            if left is not None:
                left -= len(chunk)
            yield chunk


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
