"""The whole loop, smaller than the demo, against the real Mosquitto on 127.0.0.1:1883.

Train two versions on the real Animal-MNIST cats and dogs, push them to a real
registry process, enrol agents as real processes with simulated cameras, roll
out, and check what arrived at the registry over MQTT: every device on the
rolled-out version, accuracy over 90 %, and no gap in any device's seq. Then a
tampered model file in the registry's blob store must be refused by the agent,
which keeps running its current model.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Bundle
from corral.local import LocalFleet

pytestmark = pytest.mark.e2e

MOSQUITTO = ("127.0.0.1", 1883)
# Unique per run: the broker is shared and keeps retained messages between runs.
_RUN = uuid.uuid4().hex[:6]
DEVICES = (f"e2e-{_RUN}-1", f"e2e-{_RUN}-2")


def _mosquitto_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(MOSQUITTO) == 0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    if not _mosquitto_up():
        pytest.skip("SKIPPED LOUDLY: no Mosquitto on 127.0.0.1:1883; scripts/test starts one")
    data = tmp_path_factory.mktemp("loop")
    with LocalFleet(data, python=sys.executable) as running:
        running.start_broker(f"{MOSQUITTO[0]}:{MOSQUITTO[1]}")
        running.start_registry()
        yield running


@pytest.fixture(scope="module")
def images(fleet: LocalFleet) -> Path:
    return fleet.data_dir / "camera-images"


@pytest.fixture(scope="module")
def v1(fleet: LocalFleet, images: Path) -> Path:
    bundle = fleet.train("1.0.0", fleet.data_dir / "b1", test_images=images, epochs=8)
    with fleet.client() as client:
        client.push_model(bundle)
    return bundle


def _device(fleet: LocalFleet, device_id: str) -> dict[str, Any]:
    with fleet.client() as client:
        return client.device(device_id)


def test_devices_run_the_rolled_out_version_accurately_with_no_seq_gap(
    fleet: LocalFleet, images: Path, v1: Path
) -> None:
    for i, device in enumerate(DEVICES):
        fleet.start_agent(device, [f"folder:{images}?fps=20&seed={i}"])
    with fleet.client() as client:
        client.start_rollout("animals", "1.0.0", list(DEVICES))
    fleet.wait_converged("1.0.0", DEVICES, timeout=240)

    def enough_labels() -> bool:
        return all((_device(fleet, d).get("labelled") or 0) >= 200 for d in DEVICES)

    fleet.wait_for("200 labelled frames per device", enough_labels, 180)
    for device in DEVICES:
        summary = _device(fleet, device)
        assert summary["version"] == "1.0.0"
        assert summary["state"] == "online"
        assert summary["accuracy"] > 0.90, summary
        assert summary["frames"] > 0 and summary["fps"] > 0
        seq = summary["seq"]
        assert seq["count"] > 5 and seq["missing"] == 0, seq


def test_a_tampered_model_in_the_blob_store_is_refused_and_the_current_model_keeps_running(
    fleet: LocalFleet, images: Path, v1: Path
) -> None:
    device = DEVICES[0]
    if _device(fleet, device).get("version") != "1.0.0":
        pytest.skip("needs the rollout of the previous test")
    v2 = fleet.train("1.0.1", fleet.data_dir / "b2", epochs=2, seed=3)
    with fleet.client() as client:
        client.push_model(v2)
    digest = Bundle.load(v2).model_file().sha256
    blobs = [p for p in (fleet.data_dir / "registry").rglob(digest) if p.is_file()]
    assert len(blobs) == 1, f"expected one blob named {digest} in the registry's store"
    data = bytearray(blobs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    blobs[0].write_bytes(bytes(data))

    frames_before = _device(fleet, device)["frames"]
    with fleet.client() as client:
        client.start_rollout("animals", "1.0.1", [device])

    def refused() -> bool:
        events = _device(fleet, device).get("events", [])
        return any(e.get("event") == "install_failed" for e in events)

    fleet.wait_for("the agent to refuse the tampered model", refused, 120)
    summary = _device(fleet, device)
    failure = next(e for e in summary["events"] if e.get("event") == "install_failed")
    assert failure["data"]["reason"] == "verification", failure
    assert "1.0.1" in failure["message"]
    time.sleep(6)  # one more inference window
    summary = _device(fleet, device)
    assert summary["version"] == "1.0.0"
    assert summary["state"] == "online"
    assert summary["frames"] > frames_before
