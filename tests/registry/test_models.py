"""Model pushes: immutable versions, files checked against bundle.json, blob store."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from registry.blobstore import BlobStore
from registry.errors import BlobMismatchError


def test_push_list_and_read_back(registry: Any) -> None:
    bundle, files = registry.make_bundle(files={"model.onnx": b"a" * 100, "model-int8.onnx": b"b"})
    answer = registry.push(bundle, files)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {
        "name": "animals",
        "version": "1.0.0",
        "files": ["model.onnx", "model-int8.onnx"],
    }
    listed = registry.admin.get("/api/v1/models").json()
    assert listed == [
        {
            "name": "animals",
            "version": "1.0.0",
            "created": "2025-01-01T00:00:00Z",
            "metrics": {"accuracy": 0.9},
            "lineage": {"dataset_version": "abc123"},
        }
    ]
    one = registry.admin.get("/api/v1/models/animals/1.0.0").json()
    assert one["files"] == json.loads(bundle)["files"]
    assert registry.admin.get("/api/v1/models/animals/9.9.9").status_code == 404


def test_versions_are_immutable(registry: Any) -> None:
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    again, again_files = registry.make_bundle(files={"model.onnx": b"different"})
    answer = registry.push(again, again_files)
    assert answer.status_code == 409
    assert "immutable" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("uploaded", "words"),
    [
        pytest.param({"model.onnx": b"X" * 1024}, "SHA-256", id="hash-differs"),
        pytest.param({"model.onnx": b"short"}, "bytes", id="length-differs"),
        pytest.param(
            {"model.onnx": b"not really onnx " * 64, "extra.bin": b"x"}, "not listed", id="extra"
        ),
        pytest.param({"other.onnx": b"not really onnx " * 64}, "not listed", id="wrong-name"),
        pytest.param({"model.onnx": b"not really onnx " * 64}, "not uploaded", id="missing"),
    ],
)
def test_files_must_match_the_bundle(registry: Any, uploaded: dict[str, bytes], words: str) -> None:
    listed = {"model.onnx": b"not really onnx " * 64}
    if words == "not uploaded":
        listed["labels.txt"] = b"cat\ndog\n"
    bundle, _ = registry.make_bundle(files=listed)
    answer = registry.push(bundle, uploaded)
    assert answer.status_code == 422, answer.text
    assert words in answer.json()["detail"]
    assert registry.admin.get("/api/v1/models").json() == []


def test_invalid_bundle_json_is_422(registry: Any) -> None:
    answer = registry.push(b'{"name": "animals"}', {"model.onnx": b"x"})
    assert answer.status_code == 422
    assert "bundle" in answer.json()["detail"]


def test_push_needs_admin(registry: Any) -> None:
    bundle, files = registry.make_bundle()
    answer = registry.anon.post(
        "/api/v1/models",
        files=[("bundle", ("bundle.json", bundle, "application/json"))]
        + [("files", (n, d, "application/octet-stream")) for n, d in files.items()],
    )
    assert answer.status_code == 403


def test_blob_store_checks_and_never_overwrites(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    info = store.put(io.BytesIO(b"hello"))
    path = store.path(info.sha256)
    assert path.parent.name == info.sha256[:2]
    assert path.read_bytes() == b"hello"
    path.write_bytes(b"HELLO")  # what is on disk stays, even if it is wrong
    store.put(io.BytesIO(b"hello"))
    assert path.read_bytes() == b"HELLO"
    with pytest.raises(BlobMismatchError):
        store.put(io.BytesIO(b"other"), expected_sha256="0" * 64)
    with pytest.raises(BlobMismatchError):
        store.put(io.BytesIO(b"toolong"), expected_length=3)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    with store.open(info.sha256) as handle:
        assert handle.read() == b"HELLO"
