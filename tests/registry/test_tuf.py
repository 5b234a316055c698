"""The TUF repository, checked by python-tuf's own client against the served metadata."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import DownloadHTTPError, LengthOrHashMismatchError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from agent.fetcher import HttpxFetcher
from corral.signedtime import new_nonce, verify_signed_time
from corral.targets import bundle_target, file_target
from registry._time import utcnow


def _updater(
    registry: Any, root: dict[str, Any], tmp_path: Path, token: str | None = None
) -> Updater:
    """python-tuf's client; targets need a token (the admin's unless one is given)."""
    (tmp_path / "meta").mkdir(exist_ok=True)
    (tmp_path / "dl").mkdir(exist_ok=True)
    targets = f"{registry.url}/tuf/targets/"
    return Updater(
        metadata_dir=str(tmp_path / "meta"),
        metadata_base_url=f"{registry.url}/tuf/metadata/",
        target_dir=str(tmp_path / "dl"),
        target_base_url=targets,
        bootstrap=json.dumps(root).encode(),
        fetcher=HttpxFetcher(token or registry.context.admin_token, auth_urls=[targets]),
    )


def test_agent_side_client_downloads_a_pushed_target(registry: Any, tmp_path: Path) -> None:
    root = registry.enrol("cam-1")["tuf_root"]
    payload = b"\x08\x01model bytes" * 50
    bundle, files = registry.make_bundle(files={"model.onnx": payload})
    assert registry.push(bundle, files).status_code == 201

    updater = _updater(registry, root, tmp_path)
    updater.refresh()
    info = updater.get_targetinfo(file_target("animals", "1.0.0", "model.onnx"))
    assert info is not None
    assert Path(updater.download_target(info)).read_bytes() == payload
    manifest = updater.get_targetinfo(bundle_target("animals", "1.0.0"))
    assert manifest is not None
    assert Path(updater.download_target(manifest)).read_bytes() == bundle


def test_a_device_downloads_only_the_version_it_is_assigned(registry: Any, tmp_path: Path) -> None:
    answer = registry.enrol("cam-1")
    for version in ("1.0.0", "2.0.0"):
        bundle, files = registry.make_bundle(version=version)
        assert registry.push(bundle, files).status_code == 201
    rollout = registry.admin.post(
        "/api/v1/rollouts", json={"model": "animals", "version": "2.0.0", "devices": ["cam-1"]}
    )
    assert rollout.status_code == 201, rollout.text
    updater = _updater(registry, answer["tuf_root"], tmp_path, token=answer["device_token"])
    updater.refresh()
    assigned = updater.get_targetinfo(file_target("animals", "2.0.0", "model.onnx"))
    other = updater.get_targetinfo(file_target("animals", "1.0.0", "model.onnx"))
    assert assigned is not None and other is not None
    assert Path(updater.download_target(assigned)).exists()
    with pytest.raises(DownloadHTTPError) as refused:
        updater.download_target(other)
    assert refused.value.status_code == 403
    url = f"/tuf/targets/models/animals/1.0.0/{other.hashes['sha256']}.model.onnx"
    anonymous = registry.anon.get(url)
    assert anonymous.status_code == 403 and "token" in anonymous.json()["detail"]
    with registry.client(answer["device_token"]) as device:
        refused_answer = device.get(url)
    assert "not assigned animals 1.0.0" in refused_answer.json()["detail"]


def test_tampered_blob_is_served_as_is_and_refused_by_the_client(
    registry: Any, tmp_path: Path
) -> None:
    root = registry.enrol("cam-1")["tuf_root"]
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    updater = _updater(registry, root, tmp_path)
    updater.refresh()
    info = updater.get_targetinfo(file_target("animals", "1.0.0", "model.onnx"))
    assert info is not None
    blob = registry.context.blobs.path(info.hashes["sha256"])
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info)


def test_each_push_bumps_targets_snapshot_timestamp(registry: Any) -> None:
    for version in ("1.0.0", "1.1.0"):
        bundle, files = registry.make_bundle(version=version)
        assert registry.push(bundle, files).status_code == 201
    timestamp = registry.anon.get("/tuf/metadata/timestamp.json").json()["signed"]
    assert timestamp["version"] == 3
    assert timestamp["meta"]["snapshot.json"]["version"] == 3
    snapshot = registry.anon.get("/tuf/metadata/3.snapshot.json").json()["signed"]
    assert snapshot["meta"]["targets.json"]["version"] == 3
    targets = registry.anon.get("/tuf/metadata/3.targets.json").json()["signed"]["targets"]
    assert sorted(targets) == sorted(
        file_target("animals", v, f)
        for v in ("1.0.0", "1.1.0")
        for f in ("bundle.json", "model.onnx")
    )
    # every older version stays available
    for name in ("1.targets.json", "2.targets.json", "1.snapshot.json", "1.root.json"):
        assert registry.anon.get(f"/tuf/metadata/{name}").status_code == 200
    for name in ("2.root.json", "9.targets.json", "timestamp.jsonx", "../x"):
        assert registry.anon.get(f"/tuf/metadata/{name}").status_code == 404
    assert registry.admin.get(f"/tuf/targets/models/a/1.0.0/{'0' * 64}.x").status_code == 404


def test_refresher_resigns_snapshot_and_timestamp_before_expiry(registry: Any) -> None:
    tuf = registry.context.tuf
    before = json.loads(tuf.metadata("timestamp"))["signed"]["version"]
    assert tuf.refresh() is False
    assert tuf.refresh(now=utcnow() + timedelta(hours=13)) is True
    after = json.loads(tuf.metadata("timestamp"))["signed"]["version"]
    assert after == before + 1
    assert tuf.refresh(now=utcnow() + timedelta(days=4)) is True
    snapshot = json.loads(tuf.metadata("snapshot"))["signed"]
    assert snapshot["version"] == 2
    assert json.loads(tuf.metadata("timestamp"))["signed"]["meta"]["snapshot.json"]["version"] == 2


_RANGE_CASES = [
    # (id, request headers, status, body slice or None, Content-Range)
    ("whole", {}, 200, slice(None), None),
    ("from-offset", {"Range": "bytes=100-"}, 206, slice(100, None), "bytes 100-1199/1200"),
    ("closed", {"Range": "bytes=10-19"}, 206, slice(10, 20), "bytes 10-19/1200"),
    (
        "past-end-clipped",
        {"Range": "bytes=1190-5000"},
        206,
        slice(1190, None),
        "bytes 1190-1199/1200",
    ),
    ("suffix", {"Range": "bytes=-200"}, 206, slice(1000, None), "bytes 1000-1199/1200"),
    ("unsatisfiable", {"Range": "bytes=1200-"}, 416, None, "bytes */1200"),
    ("multi-ignored", {"Range": "bytes=0-1,5-6"}, 200, slice(None), None),
    ("garbage-ignored", {"Range": "pages=1-2"}, 200, slice(None), None),
    (
        "if-range-match",
        {"Range": "bytes=100-", "If-Range": "ETAG"},
        206,
        slice(100, None),
        "bytes 100-1199/1200",
    ),
    ("if-range-stale", {"Range": "bytes=100-", "If-Range": '"0000"'}, 200, slice(None), None),
    ("if-none-match", {"If-None-Match": "ETAG"}, 304, None, None),
    ("if-none-match-other", {"If-None-Match": '"0000"'}, 200, slice(None), None),
]


@pytest.mark.parametrize(
    ("headers", "status", "part", "content_range"),
    [case[1:] for case in _RANGE_CASES],
    ids=[case[0] for case in _RANGE_CASES],
)
def test_targets_are_served_with_ranges_and_a_strong_etag(
    registry: Any,
    headers: dict[str, str],
    status: int,
    part: slice | None,
    content_range: str | None,
) -> None:
    payload = bytes(range(256)) * 4 + b"x" * 176  # 1200 bytes
    bundle, files = registry.make_bundle(files={"model.onnx": payload})
    assert registry.push(bundle, files).status_code == 201
    digest = hashlib.sha256(payload).hexdigest()
    url = f"/tuf/targets/models/animals/1.0.0/{digest}.model.onnx"
    etag = f'"{digest}"'
    sent = {k: v.replace("ETAG", etag) for k, v in headers.items()}
    response = registry.admin.get(url, headers=sent)
    assert response.status_code == status
    assert response.headers["ETag"] == etag
    assert response.headers.get("Content-Range") == content_range
    if part is not None:
        assert response.content == payload[part]
        assert response.headers["Content-Length"] == str(len(payload[part]))
        assert response.headers["Accept-Ranges"] == "bytes"
    else:
        assert response.content == b""


def test_the_signed_time_is_served_with_the_nonce_and_verifies_against_root(
    registry: Any,
) -> None:
    root = Metadata[Root].from_bytes(registry.anon.get("/tuf/metadata/1.root.json").content)
    nonce = new_nonce()

    answer = registry.anon.get("/tuf/time", params={"nonce": nonce})

    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    signed_now = verify_signed_time(answer.content, root.signed, nonce)
    assert abs(signed_now - utcnow()) < timedelta(seconds=5)
    for query in ({"nonce": "short"}, {"nonce": "x" * 200}, {"nonce": "a b" * 8}, {}):
        refused = registry.anon.get("/tuf/time", params=query)
        assert refused.status_code == 422, query
        assert "nonce" in refused.json()["detail"]
