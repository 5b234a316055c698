"""Against the real broker: rollout hints out, agent payloads in (idempotent, gaps counted)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from corral.payloads import encode
from corral.topics import topic
from tests.registry.messages import accuracy_payload

pytestmark = pytest.mark.usefixtures("broker")


def _client() -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    return client


def _publish(client: mqtt.Client, name: str, payload: bytes) -> None:
    client.publish(name, payload, qos=1).wait_for_publish(timeout=5)


def _telemetry(device: str, seq: int) -> bytes:
    body = {"cpu_percent": 12.5, "memory_percent": 40.0, "disk_percent": 10.0, "gpus": []}
    body["gpus"] = [{"temp_c": 55}, {"temp_c": 61.5}, {"name": "no temp"}]
    return encode("telemetry", device, seq, body)


def _inference(device: str, seq: int, frames: int = 100) -> bytes:
    body = {
        "window_s": 5.0,
        "frames": frames,
        "fps": 20.0,
        "latency_ms": {"p50": 4.0, "p95": 9.5, "p99": 12.0},
        "drops": 2,
        "class_counts": {"cat": 60, "dog": 40},
        "model": "animals",
        "version": "1.0.0",
    }
    return encode("inference", device, seq, body)


def test_rollout_publishes_a_retained_desired_hint(registry: Any) -> None:
    device = registry.unique_id()
    registry.enrol(device)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    bundle, files = registry.make_bundle(version="2.0.0")
    assert registry.push(bundle, files).status_code == 201

    created = registry.admin.post(
        "/api/v1/rollouts", json={"model": "animals", "version": "2.0.0", "devices": [device]}
    )
    assert created.status_code == 201, created.text
    assert created.json()["devices"][0]["desired_version"] == "2.0.0"

    # Subscribe only after publishing: the hint must be retained.
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()
    subscriber = _client()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(msg)
        arrived.set()

    subscriber.on_message = on_message
    subscriber.subscribe(topic(device, "desired"), qos=1)
    try:
        assert arrived.wait(10), "no retained desired hint arrived"
        message = json.loads(got[0].payload)
        assert got[0].retain
        assert message["schema"] == "corral.desired/1"
        assert (message["device_id"], message["seq"]) == (device, 1)
        assert (message["model"], message["version"]) == ("animals", "2.0.0")
    finally:
        subscriber.publish(topic(device, "desired"), b"", qos=1, retain=True).wait_for_publish(5)
        subscriber.loop_stop()
        subscriber.disconnect()

    desired = registry.admin.get(f"/api/v1/devices/{device}/desired").json()
    assert desired == {"model": "animals", "version": "2.0.0"}
    rollout = registry.admin.get(f"/api/v1/rollouts/{created.json()['id']}").json()
    assert rollout["devices"][0]["reported_version"] is None
    assert registry.admin.get("/api/v1/rollouts").json()[0]["id"] == rollout["id"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": "animals", "version": "9.9.9", "devices": None}, id="no-version"),
        pytest.param(
            {"model": "animals", "version": "1.0.0", "devices": ["ghost"]}, id="no-device"
        ),
    ],
)
def test_rollout_of_unknown_things_is_404(registry: Any, body: dict[str, Any]) -> None:
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    assert registry.admin.post("/api/v1/rollouts", json=body).status_code == 404


def test_ingest_is_idempotent_drops_bad_payloads_and_counts_gaps(registry: Any) -> None:
    device = registry.unique_id()
    registry.enrol(device)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    client = _client()
    try:
        status = encode(
            "status",
            device,
            1,
            {"state": "online", "model": "animals", "version": "1.0.0", "profile": "x86-cpu"},
        )
        _publish(client, topic(device, "status"), status)
        _publish(client, topic(device, "telemetry"), _telemetry(device, 2))
        _publish(client, topic(device, "inference"), _inference(device, 3))
        _publish(client, topic(device, "inference"), _inference(device, 3))  # redelivery
        _publish(client, topic(device, "inference"), b"{not json")
        _publish(client, topic(device, "telemetry"), _telemetry("someone-else", 4))
        _publish(client, topic(device, "accuracy"), accuracy_payload(device, 4, 8, 10, "1.0.0"))
        _publish(client, topic(device, "accuracy"), accuracy_payload(device, 5, 10, 10, "1.0.0"))
        events = encode("events", device, 6, {"event": "install", "message": "installed 1.0.0"})
        _publish(client, topic(device, "events"), events)
        # seq 7 and 8 are lost
        _publish(client, topic(device, "inference"), _inference(device, 9, frames=50))

        def stored() -> dict[str, Any] | None:
            answer = registry.admin.get(f"/api/v1/devices/{device}").json()
            return answer if answer["seq"]["max"] == 9 else None

        registry.wait_for(stored, timeout=20, what="ingest of seq 9")
        # The route's queries are not one snapshot on SQLite, so a read racing the
        # commit of seq 9 may see its row but not its summary; read again after it.
        detail = registry.admin.get(f"/api/v1/devices/{device}").json()
    finally:
        client.loop_stop()
        client.disconnect()

    assert detail["seq"] == {"min": 1, "max": 9, "count": 7, "missing": 2}
    assert detail["state"] == "online"
    assert (detail["model"], detail["version"], detail["profile"]) == (
        "animals",
        "1.0.0",
        "x86-cpu",
    )
    assert detail["frames"] == 150  # 100 once (despite the redelivery) + 50
    assert detail["drops"] == 4
    assert detail["fps"] == 20.0
    assert (detail["latency_p50_ms"], detail["latency_p95_ms"]) == (4.0, 9.5)
    assert (detail["cpu_percent"], detail["gpu_temp_c"]) == (12.5, 61.5)
    assert detail["labelled"] == 20
    assert detail["accuracy"] == pytest.approx(0.9)
    assert detail["last_seen"] is not None
    assert [(e["event"], e["seq"]) for e in detail["events"]] == [("install", 6)]
    counts = registry.context.ingest.counts
    assert counts["duplicates"] == 1
    # >=: the broker is shared, other suites may publish malformed payloads meanwhile
    assert counts["dropped_bad_payload"] >= 2
    listed = registry.admin.get("/api/v1/devices").json()
    assert [d["device_id"] for d in listed] == [device]
    assert "events" not in listed[0]


def test_accuracy_restarts_when_the_version_changes(registry: Any) -> None:
    device = registry.unique_id()
    registry.enrol(device)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    client = _client()
    try:
        _publish(client, topic(device, "accuracy"), accuracy_payload(device, 1, 5, 10, "1.0.0"))
        _publish(client, topic(device, "accuracy"), accuracy_payload(device, 2, 9, 10, "1.1.0"))
        registry.wait_for(
            lambda: registry.admin.get(f"/api/v1/devices/{device}").json()["seq"]["count"] == 2,
            what="two accuracy windows",
        )
    finally:
        client.loop_stop()
        client.disconnect()
    detail = registry.admin.get(f"/api/v1/devices/{device}").json()
    assert (detail["labelled"], detail["accuracy"]) == (10, 0.9)
