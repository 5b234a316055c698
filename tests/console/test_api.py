"""The console's endpoints without a browser: sign-in check, series, sparklines, stream, files.

A real registry on uvicorn (``tests/registry/conftest.registry``, on SQLite
and on PostgreSQL) and the real Mosquitto: reports are published over MQTT
with the contract's encoder and read back through the API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from corral.payloads import VariantFallback, encode, installed_event
from corral.topics import topic
from registry.api.routes.series import FIELDS, MAX_SPARKLINE_DEVICES, SCAN_FACTOR
from registry.tables import Alert


@pytest.fixture
def publisher(broker: None) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def _inference(seq: int, fps: float) -> dict[str, Any]:
    return {
        "window_s": 1.0,
        "frames": int(fps),
        "fps": fps,
        "latency_ms": {"p50": 5.0, "p95": 9.0 + seq, "p99": 12.0},
        "drops": 0,
        "queue_depth": 1,
        "errors": 0,
        "class_counts": {"cat": int(fps)},
        "model": "animals",
        "version": "1.0.0",
    }


_TELEMETRY = {
    "cpu_percent": 40.0,
    "memory_percent": 50.0,
    "disk_percent": 60.0,
    "gpus": [
        {"temp_c": 70, "util_percent": 80, "memory_used_mb": 1024, "memory_total_mb": 4096,
         "power_w": 30.5, "throttle_reasons": ["hw_slowdown"]},
        {"temp_c": 65, "util_percent": 20, "memory_used_mb": 512, "memory_total_mb": 4096,
         "power_w": 10.0, "throttle_reasons": []},
    ],
}  # fmt: skip


def _publish(
    client: mqtt.Client,
    device: str,
    kind: str,
    seq: int,
    body: dict[str, Any],
    ts: str | None = None,
) -> None:
    message = encode(kind, device, seq, body, ts)
    client.publish(topic(device, kind), message, qos=1).wait_for_publish(timeout=5)


def _stored(registry: Any, device: str, count: int) -> None:
    registry.wait_for(
        lambda: registry.admin.get(f"/api/v1/devices/{device}").json()["seq"]["count"] >= count,
        what=f"{count} messages of {device} stored",
    )


def _enrolled(registry: Any) -> str:
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    device = str(registry.unique_id("con"))
    registry.enrol(device)
    return device


def test_me_says_who_signed_in_and_refuses_device_tokens(registry: Any) -> None:
    assert registry.admin.get("/api/v1/console/me").json() == {"name": "admin", "role": "admin"}
    viewer = registry.api_token("viewer", "night-viewer")
    with registry.client(viewer) as client:
        assert client.get("/api/v1/console/me").json() == {"name": "night-viewer", "role": "viewer"}
    device = registry.enrol(registry.unique_id())
    with registry.client(device["device_token"]) as client:
        refused = client.get("/api/v1/console/me")
    assert refused.status_code == 403 and "viewer role" in refused.json()["detail"]
    assert registry.anon.get("/api/v1/console/me").status_code == 403


def test_series_come_back_in_columns_oldest_first(registry: Any, publisher: mqtt.Client) -> None:
    device = _enrolled(registry)
    start = datetime.now(UTC) - timedelta(minutes=10)
    for seq in range(1, 7):
        ts = (start + timedelta(minutes=seq)).isoformat().replace("+00:00", "Z")
        _publish(publisher, device, "inference", seq, _inference(seq, 10.0 * seq), ts)
    _publish(publisher, device, "telemetry", 7, _TELEMETRY)
    body = {"window_s": 1.0, "labelled": 10, "correct": 9, "accuracy": 0.9, "per_class": {},
            "model": "animals", "version": "1.0.0"}  # fmt: skip
    _publish(publisher, device, "accuracy", 8, body)
    _stored(registry, device, 8)

    inference = registry.admin.get(f"/api/v1/devices/{device}/series").json()
    assert inference["kind"] == "inference" and inference["fields"] == FIELDS["inference"]
    assert inference["seq"] == [1, 2, 3, 4, 5, 6]
    assert inference["values"]["fps"] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert inference["values"]["p95_ms"] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    assert inference["versions"] == ["1.0.0"] * 6
    assert inference["ts"] == sorted(inference["ts"])
    assert abs(inference["ts"][0] - (start + timedelta(minutes=1)).timestamp()) < 0.01
    assert inference["truncated"] is False

    since = (start + timedelta(minutes=4, seconds=30)).isoformat()
    later = registry.admin.get(f"/api/v1/devices/{device}/series", params={"since": since}).json()
    assert later["seq"] == [5, 6]
    assert registry.admin.get(f"/api/v1/devices/{device}/series", params={"after_seq": 4}).json()[
        "seq"
    ] == [5, 6]
    newest = registry.admin.get(f"/api/v1/devices/{device}/series", params={"limit": 2}).json()
    assert newest["seq"] == [5, 6] and newest["truncated"] is True

    telemetry = registry.admin.get(
        f"/api/v1/devices/{device}/series", params={"kind": "telemetry"}
    ).json()["values"]
    assert telemetry["gpu_temp_c"] == [70.0] and telemetry["gpu_util_percent"] == [80.0]
    assert telemetry["gpu_power_w"] == [40.5] and telemetry["gpu_memory_percent"] == [25.0]
    assert telemetry["throttled"] == [1.0] and telemetry["cpu_percent"] == [40.0]
    accuracy = registry.admin.get(
        f"/api/v1/devices/{device}/series", params={"kind": "accuracy"}
    ).json()
    assert accuracy["values"] == {"accuracy": [0.9], "labelled": [10.0], "correct": [9.0]}


def test_series_read_a_bounded_number_of_messages(registry: Any, publisher: mqtt.Client) -> None:
    device = _enrolled(registry)
    limit = 2
    for seq in range(1, limit * SCAN_FACTOR + 5):
        _publish(publisher, device, "inference", seq, _inference(seq, 5.0))
    _stored(registry, device, limit * SCAN_FACTOR + 4)
    # No telemetry in the newest limit * SCAN_FACTOR messages: the scan stops there.
    answer = registry.admin.get(
        f"/api/v1/devices/{device}/series", params={"kind": "telemetry", "limit": limit}
    ).json()
    assert answer["seq"] == [] and answer["truncated"] is True
    everything = registry.admin.get(
        f"/api/v1/devices/{device}/series", params={"kind": "telemetry"}
    ).json()
    assert everything["seq"] == [] and everything["truncated"] is False


@pytest.mark.parametrize(
    ("params", "status"),
    [
        pytest.param({"kind": "events"}, 422, id="not-a-series-kind"),
        pytest.param({"limit": 0}, 422, id="limit-zero"),
        pytest.param({"limit": 2001}, 422, id="limit-over-2000"),
        pytest.param({"since": "yesterday"}, 422, id="since-not-a-time"),
    ],
)
def test_series_refuse_bad_questions(registry: Any, params: dict[str, Any], status: int) -> None:
    device = registry.enrol(registry.unique_id())["device_id"]
    assert (
        registry.admin.get(f"/api/v1/devices/{device}/series", params=params).status_code == status
    )


def test_series_of_an_unknown_device_is_404_and_needs_a_viewer(registry: Any) -> None:
    missing = registry.admin.get("/api/v1/devices/nobody-here/series")
    assert missing.status_code == 404 and "nobody-here" in missing.json()["detail"]
    assert registry.anon.get("/api/v1/devices/nobody-here/series").status_code == 403


def test_sparklines_of_a_page_of_devices(registry: Any, publisher: mqtt.Client) -> None:
    one, two = _enrolled(registry), _enrolled(registry)
    for seq in range(1, 5):
        _publish(publisher, one, "inference", seq, _inference(seq, float(seq)))
    _publish(publisher, two, "telemetry", 1, _TELEMETRY)
    _stored(registry, one, 4)
    _stored(registry, two, 1)
    answer = registry.admin.get(
        "/api/v1/fleet/sparklines", params={"device": [one, two, "gone"], "points": 3}
    ).json()
    assert answer["points"] == 3
    assert answer["devices"][one]["fps"] == [2.0, 3.0, 4.0]
    assert answer["devices"][two] == {"fps": [], "p95_ms": []}
    assert "gone" not in answer["devices"]
    many = [f"d{i}" for i in range(MAX_SPARKLINE_DEVICES + 1)]
    refused = registry.admin.get("/api/v1/fleet/sparklines", params={"device": many})
    assert refused.status_code == 422 and "at most" in refused.json()["detail"]


def _events(lines: Iterator[str], until: str) -> list[tuple[str, Any]]:
    """Read server-sent events up to and including the first ``until`` event."""
    events: list[tuple[str, Any]] = []
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            if name == until:
                return events
    raise AssertionError(f"the stream ended before {until!r}: {events}")


def test_the_stream_sends_the_fleet_then_only_changes(registry: Any) -> None:
    device = registry.enrol(registry.unique_id())["device_id"]
    scope = {"group": "north", "tags": ["outdoor", "gate"]}
    assert registry.admin.patch(f"/api/v1/devices/{device}", json=scope).status_code == 200
    params = {"interval_s": 0.5}
    with registry.admin.stream("GET", "/api/v1/console/stream", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = _events(lines, "tick")
        names = [n for n, _ in first]
        assert names == ["hello", "devices", "rollouts", "alerts", "tick"]
        assert first[0][1] == {"name": "admin", "role": "admin", "interval_s": 0.5}
        devices = first[1][1]
        assert devices["full"] is True and devices["removed"] == []
        # The stream's summaries are the device list's, field for field.
        assert devices["changed"] == registry.admin.get("/api/v1/devices").json()
        assert [d["device_id"] for d in devices["changed"]] == [device]
        assert first[2][1] == {"full": True, "changed": [], "removed": []}
        assert first[3][1]["firing"] == 0 and first[3][1]["latest"] == 0
        # Nothing changed: the next snapshot is a bare tick.
        assert [n for n, _ in _events(lines, "tick")] == ["tick"]
        patch = registry.admin.patch(f"/api/v1/devices/{device}", json={"site": "north-gate"})
        assert patch.status_code == 200
        changed = [(n, b) for n, b in _events(lines, "tick") if n == "devices"]
        if not changed:  # the change landed just after a snapshot
            changed = [(n, b) for n, b in _events(lines, "tick") if n == "devices"]
        assert changed and changed[0][1]["full"] is False
        assert [d["site"] for d in changed[0][1]["changed"]] == ["north-gate"]


def test_the_variant_and_a_fallback_reach_the_fleet_and_the_device_page(
    registry: Any, publisher: mqtt.Client
) -> None:
    device, older = _enrolled(registry), _enrolled(registry)
    trt = "trt-fp16-l4-trt10.3"
    failed = VariantFallback(trt, "incompatible", "engine built for another TensorRT")
    installed = installed_event(
        "animals", "1.0.0", seconds=2.5, smoke_diff=0.0, swap_ms=3.0, variant="fp32",
        fallback=failed,
    )  # fmt: skip
    _publish(publisher, device, "events", 1, installed)
    status = {"state": "online", "model": "animals", "version": "1.0.0", "profile": "x86-nvidia"}
    _publish(publisher, device, "status", 2, {**status, "variant": "fp32"})
    _publish(publisher, device, "status", 3, {**status, "variant": trt})
    _publish(publisher, older, "status", 1, status)  # an agent from before the field
    _stored(registry, device, 3)
    _stored(registry, older, 1)

    listed = {d["device_id"]: d for d in registry.admin.get("/api/v1/devices").json()}
    assert (listed[device]["variant"], listed[older]["variant"]) == (trt, None)
    detail = registry.admin.get(f"/api/v1/devices/{device}").json()
    assert detail["variant"] == trt
    # The device page lists the events' messages: this one names both variants.
    (event,) = detail["events"]
    assert event["message"] == f"installed animals 1.0.0 (fp32; {trt} did not load) in 2.50 s"
    assert event["data"]["variant"] == "fp32"
    assert event["data"]["fallback"] == {
        "variant": trt, "reason": "incompatible", "detail": "engine built for another TensorRT",
    }  # fmt: skip
    # The console's stream builds its summaries apart from the API: the variant is in them.
    with registry.admin.stream("GET", "/api/v1/console/stream") as response:
        first = _events(response.iter_lines(), "tick")
    (streamed,) = [body for name, body in first if name == "devices"]
    summaries = {d["device_id"]: d for d in streamed["changed"]}
    assert summaries[device] == listed[device] and summaries[device]["variant"] == trt
    assert summaries[older]["variant"] is None


def _alert(severity: str, **extra: Any) -> Alert:
    now = datetime.now(UTC)
    return Alert(
        rule="device_offline",
        subject=f"device:{severity}-{time.monotonic_ns()}",
        severity=severity,
        message="offline",
        data={},
        started_at=now,
        last_seen_at=now,
        notified={},
        **extra,
    )


def test_the_stream_counts_the_firing_alerts(registry: Any) -> None:
    with registry.context.sessions() as session:
        session.add_all(
            [
                _alert("critical"),
                _alert("warning", acknowledged_at=datetime.now(UTC), acknowledged_by="ops"),
                _alert("warning", silenced=True),
                _alert("warning", resolved_at=datetime.now(UTC)),
            ]
        )
        session.commit()
    params = {"interval_s": 0.5}
    with registry.admin.stream("GET", "/api/v1/console/stream", params=params) as response:
        lines = response.iter_lines()
        digest = dict(_events(lines, "tick"))["alerts"]
        # Silenced alerts stay out of the counts: the navigation bar must go quiet.
        assert {k: digest[k] for k in ("firing", "critical", "unacknowledged", "silenced")} == {
            "firing": 2,
            "critical": 1,
            "unacknowledged": 1,
            "silenced": 1,
        }
        assert digest["pending_actions"] == 0 and digest["latest_action"] == 0
        latest = digest["latest"]
        assert "alerts" not in dict(_events(lines, "tick"))  # unchanged: not sent again
        ack = registry.admin.post(f"/api/v1/alerts/{latest - 3}/ack", json={"note": "on it"})
        assert ack.status_code == 200, ack.text
        now = dict(_events(lines, "tick"))
        if "alerts" not in now:  # the ack landed just after a snapshot
            now = dict(_events(lines, "tick"))
        assert now["alerts"]["unacknowledged"] == 0 and now["alerts"]["latest"] == latest


def test_the_stream_ends_when_its_token_is_revoked(registry: Any) -> None:
    token = registry.api_token("viewer", registry.unique_id("watcher"))
    name = registry.admin.get("/api/v1/tokens").json()[-1]["name"]
    with (
        registry.client(token) as client,
        client.stream("GET", "/api/v1/console/stream", params={"interval_s": 0.5}) as response,
    ):
        lines = response.iter_lines()
        _events(lines, "tick")
        assert registry.admin.post(f"/api/v1/tokens/{name}/revoke").status_code == 200
        started = time.monotonic()
        denied = _events(lines, "denied")[-1][1]
        assert "revoked" in denied["detail"]
        assert time.monotonic() - started < 5
    with registry.client(token) as client:
        refused = client.get("/api/v1/console/stream")
    assert refused.status_code == 403
    assert registry.anon.get("/api/v1/console/stream").status_code == 403


def test_console_files_are_served_with_etags_and_nothing_else_is(registry: Any) -> None:
    page = registry.anon.get("/")
    assert page.status_code == 200 and "Sign in" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = registry.anon.get("/static/js/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    again = registry.anon.get(
        "/static/js/app.js", headers={"If-None-Match": script.headers["etag"]}
    )
    assert again.status_code == 304 and not again.content
    chart = registry.anon.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert chart.status_code == 200 and b"uPlot" in chart.content
    for path in (
        "/static/%2e%2e/app.py",
        "/static/js/../../app.py",
        "/static/vendor/uplot/LICENSE",
        "/static/missing.js",
        "/static/.hidden.js",
    ):
        assert registry.anon.get(path).status_code == 404, path
