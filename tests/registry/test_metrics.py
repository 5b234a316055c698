"""``GET /metrics``: the fleet as Prometheus sees it, after real ingest through the broker."""

from __future__ import annotations

import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from corral.payloads import encode
from corral.topics import topic
from tests.registry.messages import accuracy_payload

pytestmark = pytest.mark.usefixtures("broker")


def _status(device: str, seq: int, state: str, version: str, profile: str) -> bytes:
    body = {"state": state, "model": "animals", "version": version, "profile": profile}
    return encode("status", device, seq, body)


def _inference(device: str, seq: int, fps: float, p95: float) -> bytes:
    body = {
        "window_s": 5.0,
        "frames": 100,
        "fps": fps,
        "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 2},
        "drops": 0,
        "class_counts": {"cat": 50, "dog": 50},
        "model": "animals",
        "version": None,
    }
    return encode("inference", device, seq, body)


def _telemetry(device: str, seq: int, temp: float) -> bytes:
    gpus = [{"temp_c": temp - 5}, {"temp_c": temp}]
    body = {"cpu_percent": 10.0, "memory_percent": 20.0, "disk_percent": 30.0, "gpus": gpus}
    return encode("telemetry", device, seq, body)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_aggregate_the_fleet_without_device_labels(registry: Any) -> None:
    fast, slow, gone, silent, revoked = (registry.unique_id() for _ in range(5))
    for device in (fast, slow, gone, silent, revoked):
        registry.enrol(device)
    answer = registry.admin.post(f"/api/v1/devices/{revoked}/revoke", json={"reason": "stolen"})
    assert answer.status_code == 200, answer.text
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")

    messages = [
        # fast: online, 1.0.0 on x86-cpu, 20 fps, p95 4 ms, 8/10 right, GPU at 61 °C
        (fast, "status", _status(fast, 1, "online", "1.0.0", "x86-cpu")),
        (fast, "inference", _inference(fast, 2, 20.0, 4.0)),
        (fast, "accuracy", accuracy_payload(fast, 3, 8, 10, "1.0.0")),
        (fast, "telemetry", _telemetry(fast, 4, 61.0)),
        # slow: online, 1.1.0 on a Jetson, 12.5 fps, p95 40 ms, 18/20 right, GPU at 72 °C
        (slow, "status", _status(slow, 1, "online", "1.1.0", "jetson-orin")),
        (slow, "inference", _inference(slow, 2, 12.5, 40.0)),
        (slow, "accuracy", accuracy_payload(slow, 3, 9, 10, "1.1.0")),
        (slow, "accuracy", accuracy_payload(slow, 4, 9, 10, "1.1.0")),
        (slow, "accuracy", accuracy_payload(slow, 4, 9, 10, "1.1.0")),  # a redelivery
        (slow, "telemetry", _telemetry(slow, 5, 72.0)),
        # gone: ran (stale fps, latency and a hot GPU) and went offline; no labels
        (gone, "inference", _inference(gone, 1, 99.0, 700.0)),
        (gone, "telemetry", _telemetry(gone, 2, 95.0)),
        (gone, "status", _status(gone, 3, "offline", "1.0.0", "x86-cpu")),
        # revoked: everything it sends is dropped and it counts nowhere
        (revoked, "status", _status(revoked, 1, "online", "9.9.9", "x86-cpu")),
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        for device, kind, payload in messages:
            client.publish(topic(device, kind), payload, qos=1).wait_for_publish(timeout=5)
        registry.wait_for(
            lambda: registry.context.ingest.counts.get("stored", 0) >= 12,
            timeout=20,
            what="12 messages stored",
        )
    finally:
        client.disconnect()
        client.loop_stop()

    scrape = registry.admin.get("/metrics")
    assert scrape.status_code == 200, scrape.text
    assert scrape.headers["content-type"].startswith("text/plain")
    got = _samples(scrape.text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("corral_devices", state="online") == 2
    assert value("corral_devices", state="offline") == 1
    assert value("corral_devices", state="unknown") == 1  # silent
    assert value("corral_devices_by_profile", profile="x86-cpu") == 3  # fast, gone, silent
    assert value("corral_devices_by_profile", profile="jetson-orin") == 1
    assert value("corral_devices_by_version", model="animals", version="1.0.0") == 2
    assert value("corral_devices_by_version", model="animals", version="1.1.0") == 1
    assert value("corral_devices_by_version", model="none", version="none") == 1
    assert not any(
        name == "corral_devices_by_version" and ("version", "9.9.9") in labels
        for name, labels in got
    )

    # offline devices' stale figures stay out; silent has none
    assert value("corral_fleet_fps") == 32.5
    assert value("corral_device_latency_p95_ms_count") == 2
    assert value("corral_device_latency_p95_ms_sum") == 44.0
    assert value("corral_device_latency_p95_ms_bucket", le="2.5") == 0
    assert value("corral_device_latency_p95_ms_bucket", le="5.0") == 1
    assert value("corral_device_latency_p95_ms_bucket", le="50.0") == 2
    assert value("corral_device_latency_p95_ms_bucket", le="+Inf") == 2
    assert value("corral_fleet_gpu_temp_max_celsius") == 72.0

    assert value("corral_fleet_accuracy_devices") == 2
    assert value("corral_fleet_accuracy_mean") == pytest.approx((0.8 + 0.9) / 2)
    assert value("corral_fleet_accuracy_min") == pytest.approx(0.8)

    counts = registry.context.ingest.counts
    assert value("corral_ingest_messages_total", outcome="stored") == 12
    assert value("corral_ingest_messages_total", outcome="duplicates") == 1
    # >=: retained status messages of earlier runs' devices arrive too
    assert value("corral_ingest_messages_total", outcome="received") >= len(messages)
    assert value("corral_ingest_dropped_total", reason="revoked") == counts["dropped_revoked"]
    assert counts["dropped_revoked"] >= 1
    assert value("corral_mqtt_connected") == 1

    devices = {fast, slow, gone, silent, revoked}
    for name, labels in got:
        assert not {"device", "device_id", "id"} & {k for k, _ in labels}, name
        assert not devices & {v for _, v in labels}, name


def test_metrics_need_a_viewer_token_and_start_empty(registry: Any) -> None:
    assert registry.anon.get("/metrics").status_code == 403
    with registry.client(registry.api_token("viewer")) as viewer:
        scrape = viewer.get("/metrics")
    assert scrape.status_code == 200, scrape.text
    got = _samples(scrape.text)
    assert got[("corral_devices", (("state", "online"),))] == 0
    assert got[("corral_fleet_fps", ())] == 0
    assert got[("corral_device_latency_p95_ms_count", ())] == 0
    assert got[("corral_fleet_accuracy_devices", ())] == 0
    names = {name for name, _ in got}
    # no device with labels or a GPU: those series are absent, not a made-up number
    assert "corral_fleet_accuracy_mean" not in names
    assert "corral_fleet_gpu_temp_max_celsius" not in names
