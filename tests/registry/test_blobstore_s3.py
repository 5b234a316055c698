"""Blobs in an S3-compatible store: a real S3 HTTP server (moto's) started in the test.

The registry runs with ``CORRAL_BLOB_STORE=s3`` against it; the same download
tests run against the local store, so both serve ``/tuf/targets/...`` alike
(whole file, ``Range``, ``ETag``, ``If-None-Match``, 416). The store's own
contract (never overwrite, refuse a mismatch before uploading, stream a
range) and its errors are checked against the same server.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from registry.api.errors import status_for
from registry.errors import (
    BlobMismatchError,
    BlobStoreError,
    ConfigError,
    NotFoundError,
    RegistryError,
)
from registry.s3blobs import S3BlobStore
from tests.registry.mosquitto import free_port

# Over 8 MiB: boto3 uploads it in parts, and it spans several 1 MiB read chunks.
MODEL = os.urandom(9 * (1 << 20) + 12345)
DIGEST = hashlib.sha256(MODEL).hexdigest()
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "corral-test",
    "AWS_SECRET_ACCESS_KEY": "corral-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 HTTP server on a free port of 127.0.0.1 (moto, in memory)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, with credentials in the environment as boto3 reads them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    name = f"corral-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(bucket: str, s3_endpoint: str, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(bucket, tmp_path / "tmp", endpoint_url=s3_endpoint, prefix="blobs/")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only here: where blobs live does not depend on the database."""
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=["s3", "local"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which blob store the registry fixture gets: the one under test, or the local one."""
    if request.param == "s3":
        bucket_name = request.getfixturevalue("bucket")
        monkeypatch.setenv("CORRAL_BLOB_STORE", "s3")
        monkeypatch.setenv("CORRAL_S3_BUCKET", bucket_name)
        monkeypatch.setenv("CORRAL_S3_ENDPOINT_URL", request.getfixturevalue("s3_endpoint"))
    return str(request.param)


@pytest.fixture
def registry(backend: str, registry: Any) -> Any:
    """The registry of conftest, started with the blob store ``backend`` chose."""
    return registry


def pushed(registry: Any) -> str:
    bundle, files = registry.make_bundle(files={"model.onnx": MODEL})
    answer = registry.push(bundle, files)
    assert answer.status_code == 201, answer.text
    return f"/tuf/targets/models/animals/1.0.0/{DIGEST}.model.onnx"


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_a_pushed_model_lands_in_the_bucket_not_on_local_disk(
    registry: Any, s3_endpoint: str
) -> None:
    pushed(registry)
    settings = registry.context.settings
    stored = boto3.client("s3", endpoint_url=s3_endpoint).get_object(
        Bucket=settings.s3_bucket, Key=f"blobs/{DIGEST[:2]}/{DIGEST}"
    )
    assert stored["Body"].read() == MODEL
    assert not (settings.data_dir / "blobs").exists()
    assert list((settings.data_dir / "tmp").iterdir()) == []  # uploads leave nothing behind


def test_a_model_downloads_whole_and_by_range_with_a_stable_etag(registry: Any) -> None:
    url = pushed(registry)

    whole = registry.admin.get(url)
    assert whole.status_code == 200
    assert whole.content == MODEL
    assert whole.headers["etag"] == f'"{DIGEST}"'
    assert whole.headers["accept-ranges"] == "bytes"

    part = registry.admin.get(url, headers={"Range": "bytes=1048000-3145999"})
    assert part.status_code == 206
    assert part.content == MODEL[1048000:3146000]
    assert part.headers["content-range"] == f"bytes 1048000-3145999/{len(MODEL)}"
    assert part.headers["etag"] == whole.headers["etag"]

    # A resumed download: from where the partial file ends, if it is still the same file.
    rest = registry.admin.get(
        url, headers={"Range": f"bytes={len(MODEL) - 5000}-", "If-Range": f'"{DIGEST}"'}
    )
    assert rest.status_code == 206
    assert rest.content == MODEL[-5000:]

    tail = registry.admin.get(url, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, MODEL[-10:])

    cached = registry.admin.get(url, headers={"If-None-Match": f'"{DIGEST}"'})
    assert cached.status_code == 304
    assert cached.headers["etag"] == whole.headers["etag"]

    beyond = registry.admin.get(url, headers={"Range": f"bytes={len(MODEL)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(MODEL)}"

    again = registry.admin.get(url, headers={"Range": "bytes=0-0"})
    assert again.headers["etag"] == whole.headers["etag"]


def test_an_unknown_target_is_404(registry: Any) -> None:
    pushed(registry)
    missing = registry.admin.get(f"/tuf/targets/models/animals/1.0.0/{'0' * 64}.model.onnx")
    assert missing.status_code == 404
    assert "targets are named" in missing.json()["detail"]


# --- the store itself ----------------------------------------------------------------


def test_the_same_blob_is_uploaded_once_and_never_overwritten(
    store: S3BlobStore, bucket: str, s3_endpoint: str
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    first = store.put(io.BytesIO(b"model bytes"), expected_sha256=None)
    etag = client.head_object(Bucket=bucket, Key=store.key(first.sha256))["ETag"]
    second = store.put(io.BytesIO(b"model bytes"))

    assert first == second
    assert client.head_object(Bucket=bucket, Key=store.key(first.sha256))["ETag"] == etag
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
    assert store.exists(first.sha256)
    assert store.length(first.sha256) == len(b"model bytes")


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        pytest.param({"expected_sha256": "0" * 64}, "differs from bundle.json", id="digest"),
        pytest.param({"expected_length": 3}, "more than the 3 bytes", id="longer"),
        pytest.param({"expected_length": 99}, "expected 99 bytes", id="shorter"),
        pytest.param({"max_length": 4}, "more than the 4 bytes", id="over-the-cap"),
    ],
)
def test_a_mismatching_upload_is_refused_before_anything_is_uploaded(
    store: S3BlobStore,
    bucket: str,
    s3_endpoint: str,
    declared: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(BlobMismatchError, match=message):
        store.put(io.BytesIO(b"eleven bytes"), **declared)
    assert (
        boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    )


def test_read_streams_exactly_the_range_asked_for(store: S3BlobStore) -> None:
    info = store.put(io.BytesIO(MODEL))
    chunks = list(store.read(info.sha256, 10, 3 * (1 << 20)))

    assert b"".join(chunks) == MODEL[10 : 3 * (1 << 20) + 1]
    assert max(len(c) for c in chunks) <= 1 << 20
    assert b"".join(store.read(info.sha256)) == MODEL
    empty = store.put(io.BytesIO(b""))
    assert b"".join(store.read(empty.sha256, 0, -1)) == b""


def test_a_missing_blob_is_not_found_before_streaming(store: S3BlobStore) -> None:
    assert not store.exists("a" * 64)
    with pytest.raises(NotFoundError):
        store.length("a" * 64)
    with pytest.raises(NotFoundError):
        store.read("a" * 64)  # raised by the call, not by the first chunk
    with pytest.raises(NotFoundError, match="not a SHA-256"):
        store.read("../../etc/passwd")


def test_a_missing_bucket_stops_the_registry_at_start(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import Settings

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        data_dir=tmp_path, blob_store="s3", s3_bucket="no-such-bucket", s3_endpoint_url=s3_endpoint
    )
    with pytest.raises(ConfigError, match="'no-such-bucket' does not exist; create it"):
        S3BlobStore.from_settings(settings)
    with pytest.raises(ConfigError, match="needs CORRAL_S3_BUCKET"):
        S3BlobStore.from_settings(Settings(data_dir=tmp_path, blob_store="s3"))


def test_an_unreachable_store_is_a_blob_store_error_that_says_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    closed = f"http://127.0.0.1:{free_port()}"
    store = S3BlobStore("corral", tmp_path, endpoint_url=closed)
    with pytest.raises(BlobStoreError, match="cannot reach the S3 store.*CORRAL_S3_ENDPOINT_URL"):
        store.read("a" * 64)
    assert status_for(BlobStoreError("x")) == 503


def test_missing_credentials_are_a_blob_store_error_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bare = S3BlobStore("corral", tmp_path, endpoint_url=s3_endpoint)
    with pytest.raises(BlobStoreError, match="no S3 credentials; set AWS_ACCESS_KEY_ID"):
        bare.length("a" * 64)


def test_every_registry_error_a_request_can_raise_has_an_http_status() -> None:
    def subclasses(kind: type) -> list[type]:
        return [kind, *(s for c in kind.__subclasses__() for s in subclasses(c))]

    # ConfigError is the registry's own settings, found at start-up: a 500 if ever served;
    # KeyFileError is raised only by `corral keys`, on the operator's own key files.
    from registry.keys import KeyFileError

    raised_by_requests = [
        k for k in subclasses(RegistryError)[1:] if k not in (ConfigError, KeyFileError)
    ]
    assert [k.__name__ for k in raised_by_requests if status_for(k("x")) == 500] == []
