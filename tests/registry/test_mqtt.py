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


def _window(version: str, frames: int = 100) -> dict[str, Any]:
    return {
        "window_s": 5.0,
        "frames": frames,
        "fps": 20.0,
        "latency_ms": {"p50": 4.0, "p95": 9.5, "p99": 12.0},
        "drops": 2,
        "class_counts": {"cat": 60, "dog": 40},
        "model": "animals",
        "version": version,
    }


def _inference(device: str, seq: int, frames: int = 100) -> bytes:
    return encode("inference", device, seq, _window("1.0.0", frames))


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

    # A subscriber that comes later gets the hint: the broker retained it. (The
    # registry hands it to its MQTT connection before answering; the broker may see
    # a new subscriber first, which then gets it live: such a one tries again.)
    def retained_hint() -> mqtt.MQTTMessage | None:
        got: list[mqtt.MQTTMessage] = []
        arrived = threading.Event()
        subscriber = _client()
        subscriber.on_message = lambda _c, _u, msg: (got.append(msg), arrived.set())
        subscriber.subscribe(topic(device, "desired"), qos=1)
        try:
            arrived.wait(2)
        finally:
            subscriber.disconnect()
            subscriber.loop_stop()
        return got[0] if got and got[0].retain else None

    hint = registry.wait_for(retained_hint, what="a retained desired hint")
    message = json.loads(hint.payload)
    assert message["schema"] == "corral.desired/1"
    assert (message["device_id"], message["seq"]) == (device, 1)
    assert (message["model"], message["version"]) == ("animals", "2.0.0")
    assert message["shadow"] is None, "the hint carries the whole desired state"
    cleaner = _client()
    cleaner.publish(topic(device, "desired"), b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()
    cleaner.loop_stop()

    desired = registry.admin.get(f"/api/v1/devices/{device}/desired").json()
    assert desired == {"model": "animals", "version": "2.0.0", "variant": None, "shadow": None}
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
        client.disconnect()
        client.loop_stop()

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
        client.disconnect()
        client.loop_stop()
    detail = registry.admin.get(f"/api/v1/devices/{device}").json()
    assert (detail["labelled"], detail["accuracy"]) == (10, 0.9)


def test_a_rollout_can_choose_the_variant_devices_install(registry: Any) -> None:
    import hashlib

    from corral.bundle import Bundle, BundleFile

    device = registry.unique_id()
    registry.enrol(device)
    raw, files = registry.make_bundle(version="3.0.0")
    int8 = b"an int8 model " * 64
    bundle = Bundle.from_bytes(raw)
    bundle.files.append(
        BundleFile("model-int8.onnx", hashlib.sha256(int8).hexdigest(), len(int8), variant="int8")
    )
    pushed = registry.push(bundle.to_bytes(), {**files, "model-int8.onnx": int8})
    assert pushed.status_code == 201, pushed.text
    body = {"model": "animals", "version": "3.0.0", "selector": {"devices": [device]}}

    missing = registry.admin.post("/api/v1/rollouts", json={**body, "variant": "trt-a100"})
    assert missing.status_code == 422
    assert "no 'trt-a100' variant (it has ['fp32', 'int8'])" in missing.json()["detail"]
    assert registry.admin.get(f"/api/v1/devices/{device}/desired").json()["version"] is None

    created = registry.admin.post("/api/v1/rollouts", json={**body, "variant": "int8"})
    assert created.status_code == 201, created.text
    desired = registry.admin.get(f"/api/v1/devices/{device}/desired").json()
    assert (desired["version"], desired["variant"]) == ("3.0.0", "int8")


def _status(device: str, seq: int, version: str | None, **extra: Any) -> bytes:
    body = {"state": "online", "model": "animals" if version else None, "version": version}
    return encode("status", device, seq, {**body, "profile": "x86-nvidia", **extra})


def _published(registry: Any, device: str, messages: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Publish ``messages`` (kind, payload) in order; the device's detail once all are stored."""
    before = registry.admin.get(f"/api/v1/devices/{device}").json()["seq"]["count"]
    client = _client()
    try:
        for kind, payload in messages:
            _publish(client, topic(device, kind), payload)
        registry.wait_for(
            lambda: registry.admin.get(f"/api/v1/devices/{device}").json()["seq"]["count"]
            == before + len(messages),
            timeout=20,
            what=f"{len(messages)} more messages of {device}",
        )
    finally:
        client.disconnect()
        client.loop_stop()
    # Read again: on SQLite a read racing the commit may see the rows but not the summary.
    return dict(registry.admin.get(f"/api/v1/devices/{device}").json())


def _listed_variant(registry: Any, device: str) -> str | None:
    (listed,) = [
        d for d in registry.admin.get("/api/v1/devices").json() if d["device_id"] == device
    ]
    return listed["variant"]  # type: ignore[no-any-return]


def test_the_variant_a_status_reports_is_the_devices_until_it_installs_another(
    registry: Any,
) -> None:
    device = registry.unique_id()
    registry.enrol(device)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    assert registry.admin.get(f"/api/v1/devices/{device}").json()["variant"] is None
    trt = "trt-fp16-l4-trt10.3"

    running = _published(registry, device, [("status", _status(device, 1, "1.0.0", variant=trt))])
    assert (running["version"], running["variant"]) == ("1.0.0", trt)
    assert _listed_variant(registry, device) == trt
    # Its own windows leave it; a window of another version (before the status
    # that follows an install) makes it unknown; that status names the new one.
    assert _published(registry, device, [("inference", _inference(device, 2))])["variant"] == trt
    after_install = [("inference", encode("inference", device, 3, _window("1.1.0")))]
    switched = _published(registry, device, after_install)
    assert (switched["version"], switched["variant"]) == ("1.1.0", None)
    fallback = _published(
        registry, device, [("status", _status(device, 4, "1.1.0", variant="fp32"))]
    )
    assert (fallback["version"], fallback["variant"]) == ("1.1.0", "fp32")
    # No model, no variant.
    stopped = _published(registry, device, [("status", _status(device, 5, None, variant=None))])
    assert (stopped["model"], stopped["variant"]) == (None, None)
    assert _listed_variant(registry, device) is None


def test_a_status_without_a_good_variant_leaves_it_unknown_and_keeps_the_rest(
    registry: Any,
) -> None:
    device = registry.unique_id()
    registry.enrol(device)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    newer = _published(registry, device, [("status", _status(device, 1, "1.0.0", variant="int8"))])
    assert newer["variant"] == "int8"
    # An agent from before the field (downgraded, say) says nothing of its file:
    # not the int8 an earlier agent reported.
    older = _published(registry, device, [("status", _status(device, 2, "1.0.0"))])
    assert (older["state"], older["version"], older["variant"]) == ("online", "1.0.0", None)
    assert _listed_variant(registry, device) is None
    _published(registry, device, [("status", _status(device, 3, "1.0.0", variant="int8"))])
    for seq, bad in enumerate(["../../x", "x" * 65, 7, {"name": "int8"}], start=4):
        detail = _published(
            registry, device, [("status", _status(device, seq, "1.1.0", variant=bad))]
        )
        assert (detail["version"], detail["variant"]) == ("1.1.0", None), bad
