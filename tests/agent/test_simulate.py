"""The fleet simulator against a real registry process and the real Mosquitto on 127.0.0.1:1883.

Twenty simulated agents enrol with real one-time tokens, verify and install a
tiny bundle through the real updater (TUF), and report over MQTT. A rollout
converges, no device has a seq gap, and a cohort that crashes on install
reports ``install_failed`` and keeps running its old version.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.simulate import Cohort, Fleet, parse_cohort, split_fleet
from corral import Bundle, BundleFile, GoldenSample, InputSpec, OutputSpec, file_digest
from corral.bundle import BUNDLE_FILE
from corral.local import LocalFleet

MOSQUITTO = ("127.0.0.1", 1883)


def _mosquitto_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(MOSQUITTO) == 0


def tiny_bundle(out: Path, version: str) -> Path:
    """A 4x4 gray, two-label bundle with one golden sample."""
    out.mkdir(parents=True)
    weights = np.zeros((16, 2), np.float32)
    weights[:, 0], weights[:, 1] = 1 / 16, -1 / 16
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [16, 2], weights.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "model.onnx"))
    digest, length = file_digest(out / "model.onnx")
    bundle = Bundle(
        name="tiny",
        version=version,
        input=InputSpec(name="input", shape=[None, 1, 4, 4]),
        output=OutputSpec(name="logits", labels=["cat", "dog"]),
        files=[BundleFile("model.onnx", digest, length)],
        golden=[GoldenSample([1.0] * 16, [1.0, -1.0])],
        golden_tolerance=1e-4,
        metrics={"accuracy": 0.95},
    )
    (out / BUNDLE_FILE).write_bytes(bundle.to_bytes())
    return out


def test_cohorts_parse_and_split() -> None:
    slow = parse_cohort("slow=0.25:latency_ms=40,fps=5,accuracy@1.1.0=0.8,crash=0.5")
    assert (slow.name, slow.fraction, slow.latency_ms, slow.fps, slow.crash) == (
        "slow",
        0.25,
        40.0,
        5.0,
        0.5,
    )
    assert dict(slow.accuracy_by_version) == {"1.1.0": 0.8}
    plan = split_fleet(10, [Cohort("a", 0.75), slow])
    # 7.5 and 2.5: equal remainders, the first cohort gets the odd agent.
    assert [c.name for c in plan].count("slow") == 2
    assert len(plan) == 10


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    if not _mosquitto_up():
        pytest.skip("SKIPPED LOUDLY: no Mosquitto on 127.0.0.1:1883; scripts/test starts one")
    data = tmp_path_factory.mktemp("sim")
    with LocalFleet(data, python=sys.executable) as running:
        running.start_broker(f"{MOSQUITTO[0]}:{MOSQUITTO[1]}")
        running.start_registry()
        with running.client() as client:
            client.push_model(tiny_bundle(data / "b1", "1.0.0"))
            client.push_model(tiny_bundle(data / "b2", "1.1.0"))
        yield running


def test_twenty_simulated_agents_roll_out_without_seq_gaps(local: LocalFleet) -> None:
    cohorts = [
        Cohort("ok", 0.8, accuracy=0.9),
        Cohort("crashy", 0.2, latency_ms=30.0, crash=1.0, crash_from="1.1.0"),
    ]
    fleet = Fleet(
        local.registry_url,
        local.admin_token,
        local.data_dir / "agents",
        20,
        cohorts,
        install_concurrency=4,
        report_interval_s=0.5,
    )
    try:
        fleet.enrol()
        fleet.start()
        assert fleet.wait_connected(30)
        ids = fleet.device_ids
        crashy = [a.device_id for a in fleet.cohort_of("crashy")]
        assert len(crashy) == 4

        with local.client() as client:
            client.start_rollout("tiny", "1.0.0", ids)
        local.wait_converged("1.0.0", ids, timeout=60)

        with local.client() as client:
            client.start_rollout("tiny", "1.1.0", ids)
        ok = [i for i in ids if i not in crashy]
        local.wait_converged("1.1.0", ok, timeout=60)

        def crashy_reported() -> bool:
            with local.client() as client:
                return all(
                    any(e["event"] == "install_failed" for e in client.device(d)["events"])
                    for d in crashy
                )

        local.wait_for("install_failed from the crashing cohort", crashy_reported, 30)
        # Windows of the new version reach the registry (the ok cohort reports 0.9).
        local.wait_for("accuracy windows", lambda: _accuracy_seen(local, ok[0], "1.1.0"), 30)
    finally:
        fleet.stop(forget=True)

    # After a clean stop every message is acknowledged; the registry stored them all.
    last = {a.device_id: a.last_seq for a in fleet.agents}
    local.wait_for("every seq stored", lambda: _all_stored(local, last), 30)
    with local.client() as client:
        for device_id in ids:
            detail = client.device(device_id)
            assert detail["seq"]["missing"] == 0, (device_id, detail["seq"])
            assert detail["seq"]["min"] == 0
            # The service's installed event (corral.payloads.installed_event), no swap.
            installed = [e["data"] for e in detail["events"] if e["event"] == "installed"]
            assert installed, device_id
            assert {"model", "version", "seconds", "smoke_diff", "swap_ms"} <= set(installed[0])
            assert installed[0]["model"] == "tiny" and installed[0]["swap_ms"] == 0.0
        for device_id in crashy:
            detail = client.device(device_id)
            assert detail["version"] == "1.0.0"
            failed = [e for e in detail["events"] if e["event"] == "install_failed"]
            assert failed and failed[0]["data"]["version"] == "1.1.0"
            assert failed[0]["data"]["reason"] == "smoke_test"


def _accuracy_seen(local: LocalFleet, device_id: str, version: str) -> bool:
    with local.client() as client:
        d = client.device(device_id)
    return d.get("version") == version and d.get("accuracy") is not None and d["labelled"] > 0


def _all_stored(local: LocalFleet, last: dict[str, int | None]) -> bool:
    with local.client() as client:
        return all(client.device(d)["seq"]["max"] == seq for d, seq in last.items())
