"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW...), through boto3.

Selected by ``CORRAL_BLOB_STORE=s3`` with ``CORRAL_S3_BUCKET`` and, for a
store other than AWS, ``CORRAL_S3_ENDPOINT_URL``; credentials come from
boto3's own chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a
profile, a pod's role), never from Corral's settings, so they are never in
its logs. boto3 comes with the ``s3`` extra.

The same contract as the local store (``registry.blobstore``):

- a blob's key is ``<prefix><sha256[:2]>/<sha256>``;
- ``put`` first copies the upload into a local temporary file while hashing
  and checking it (the key is the digest, known only at the end), then
  uploads it (multipart beyond 8 MiB) unless the key exists: the same digest
  means the same bytes, so an object is never overwritten;
- ``read`` asks for exactly the byte range wanted (``Range: bytes=N-M``) and
  streams the answer in chunks of up to a MiB, so a resumed download does
  not fetch the whole object from the store; the object is requested before
  ``read`` returns, so a missing blob is a 404 rather than a cut response.

boto3's errors stop here: a missing object becomes ``NotFoundError``; a store
that cannot be reached, or refuses the credentials, ``BlobStoreError`` (503),
with what to check; a missing bucket at start-up, ``ConfigError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from registry.blobstore import MAX_BLOB, BlobInfo, check_digest, spool
from registry.core.config import Settings
from registry.errors import BlobStoreError, ConfigError, NotFoundError, RegistryError

__all__ = ["S3BlobStore", "translate_error"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MISSING = {"404", "NoSuchKey", "NotFound"}
_REFUSED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


def translate_error(error: Exception, what: str) -> RegistryError:
    """Our error for a boto3/botocore one.

    Args:
        error: what boto3 raised.
        what: what we were doing, for the message (``"blob ab12…"``).

    Returns:
        ``NotFoundError`` for a missing object, ``BlobStoreError`` for everything else.
    """
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        return _answered(error, what)
    return BlobStoreError(f"{what}: {_transport(error)}")


def _answered(error: Exception, what: str) -> RegistryError:
    code = _code(error)
    if code in _MISSING:
        return NotFoundError(f"{what}: no such object in the blob store")
    if code == "NoSuchBucket":
        return BlobStoreError(
            f"{what}: the bucket does not exist; create it or set CORRAL_S3_BUCKET"
        )
    if code in _REFUSED:
        return BlobStoreError(
            f"{what}: the S3 store refused our credentials ({code}); check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy"
        )
    return BlobStoreError(f"{what}: the S3 store answered {code or 'an error'}: {error}")


def _transport(error: Exception) -> str:
    from botocore.exceptions import (
        BotoCoreError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return (
            "no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or an AWS profile or role)"
        )
    if isinstance(error, EndpointConnectionError):
        return f"cannot reach the S3 store ({error}); check CORRAL_S3_ENDPOINT_URL and the network"
    if isinstance(error, BotoCoreError):
        return f"the S3 client failed: {error}"
    return f"{type(error).__name__}: {error}"


def _boto_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


class S3BlobStore:
    """Blobs in ``bucket`` under ``prefix``, named by their SHA-256.

    Args:
        bucket: the bucket; it must exist (see :meth:`check`).
        tmp_dir: a local folder for uploads on their way in.
        prefix: key prefix, ending in ``/`` (or empty).
        endpoint_url: the store's URL; None for AWS S3.
        region: the region; None for boto3's default.

    Raises:
        ConfigError: boto3 is not installed.
    """

    def __init__(
        self,
        bucket: str,
        tmp_dir: Path,
        *,
        prefix: str = "blobs/",
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise ConfigError(
                "CORRAL_BLOB_STORE=s3 needs boto3; install the s3 extra: pip install 'corral[s3]'"
            ) from e
        self.bucket = bucket
        self.prefix = prefix
        self._tmp = Path(tmp_dir)
        self._tmp.mkdir(parents=True, exist_ok=True)
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10)
        # A session of its own: boto3's default one caches credentials process-wide.
        # Clients are thread-safe, so FastAPI's worker threads share this one.
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The store ``settings`` describe, checked to be reachable.

        Raises:
            ConfigError: no bucket configured, boto3 missing, or the bucket
                cannot be reached with the credentials at hand.
        """
        if not settings.s3_bucket:
            raise ConfigError("CORRAL_BLOB_STORE=s3 needs CORRAL_S3_BUCKET (an existing bucket)")
        store = cls(
            settings.s3_bucket,
            settings.data_dir / "tmp",
            prefix=settings.s3_prefix,
            # An empty value (a ConfigMap key left blank) means "not set", as for AWS itself.
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region or None,
        )
        store.check()
        return store

    def check(self) -> None:
        """Check the bucket exists and the credentials may use it.

        Raises:
            ConfigError: it does not, or cannot be reached; the message says what to fix.
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except _boto_errors() as e:
            if _code(e) in _MISSING | {"NoSuchBucket"}:
                raise ConfigError(
                    f"S3 bucket {self.bucket!r} does not exist; create it, or set "
                    "CORRAL_S3_BUCKET to an existing one"
                ) from e
            raise ConfigError(str(translate_error(e, f"S3 bucket {self.bucket!r}"))) from e

    def key(self, sha256: str) -> str:
        """The object key of a blob.

        Raises:
            NotFoundError: ``sha256`` is not 64 lowercase hex digits.
        """
        check_digest(sha256)
        return f"{self.prefix}{sha256[:2]}/{sha256}"

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored.

        Raises:
            BlobStoreError: the store cannot be asked.
        """
        try:
            self.length(sha256)
        except NotFoundError:
            return False
        return True

    def length(self, sha256: str) -> int:
        """The blob's length in bytes.

        Raises:
            NotFoundError: no such blob.
            BlobStoreError: the store cannot be asked.
        """
        key = self.key(sha256)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except _boto_errors() as e:
            raise translate_error(e, f"blob {sha256}") from e
        return int(head["ContentLength"])

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
                digest differs from the expected one; nothing is uploaded.
            BlobStoreError: the store cannot be reached or refused the upload.
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
            if self.exists(info.sha256):
                return info  # same digest, same bytes: never overwrite
            try:
                self._client.upload_file(
                    str(tmp),
                    self.bucket,
                    self.key(info.sha256),
                    ExtraArgs={"ContentType": "application/octet-stream"},
                )
            except _boto_errors() as e:
                raise translate_error(e, f"{name}: uploading blob {info.sha256}") from e
            logger.info("stored blob %s (%d bytes) in %s", info.sha256, info.length, self.bucket)
            return info
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; None: the last), in chunks of up to a MiB.

        Raises:
            NotFoundError: no such blob (raised here, before any byte is yielded).
            BlobStoreError: the store cannot be reached; while streaming too.
        """
        key = self.key(sha256)
        if end is not None and end < start:
            return iter(())  # an empty blob's whole range: nothing to ask for
        last = "" if end is None else str(end)
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{last}"}
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key, **ranged)
        except _boto_errors() as e:
            raise translate_error(e, f"blob {sha256}") from e
        return _body_chunks(answer["Body"], sha256)


def _body_chunks(body: Any, sha256: str) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(_CHUNK)
    except _boto_errors() as e:
        raise translate_error(e, f"streaming blob {sha256}") from e
    finally:
        body.close()


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
