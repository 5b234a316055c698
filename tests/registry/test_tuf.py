"""The TUF repository, checked by python-tuf's own client against the served metadata."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.ngclient import Updater

from corral.targets import bundle_target, file_target
from registry._time import utcnow


def _updater(registry: Any, root: dict[str, Any], tmp_path: Path) -> Updater:
    (tmp_path / "meta").mkdir(exist_ok=True)
    (tmp_path / "dl").mkdir(exist_ok=True)
    return Updater(
        metadata_dir=str(tmp_path / "meta"),
        metadata_base_url=f"{registry.url}/tuf/metadata/",
        target_dir=str(tmp_path / "dl"),
        target_base_url=f"{registry.url}/tuf/targets/",
        bootstrap=json.dumps(root).encode(),
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
    assert registry.anon.get(f"/tuf/targets/models/a/1.0.0/{'0' * 64}.x").status_code == 404


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
