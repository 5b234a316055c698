"""Alerts against a real registry, broker and database: rules fire, dedupe, resolve, deliver.

Payloads go through the real broker and ingest; each test then runs an
evaluation itself (the registry fixture turns the background interval off)
so that what fired is decided at a known moment.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from corral.payloads import encode
from corral.topics import topic
from registry._time import utcnow
from registry.alerts import stats

pytestmark = pytest.mark.usefixtures("broker")

BASELINE = {
    "source": "test split",
    "samples": 2000,
    "class_prior": {"cat": 0.5, "dog": 0.5},
    "confidence_hist": {"bins": [0.5, 0.75, 1.0], "counts": [400, 1600]},
}


class Device:
    """One fake park computer speaking the real payload contract over the real broker."""

    def __init__(self, registry: Any, version: str = "1.0.0") -> None:
        self.registry = registry
        self.id = registry.unique_id("alert")
        registry.enrol(self.id)
        self.version = version
        self.seq = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()

    def send(self, kind: str, body: dict[str, Any]) -> None:
        self.client.publish(
            topic(self.id, kind),
            encode(kind, self.id, self.seq, body),
            qos=1,
            retain=kind == "status",
        ).wait_for_publish(5)
        self.seq += 1

    def status(self, state: str = "online") -> None:
        self.send(
            "status",
            {"state": state, "model": "animals", "version": self.version, "profile": "x86-cpu"},
        )

    def inference(self, cats: int, dogs: int, confident: float = 0.8) -> None:
        frames = cats + dogs
        self.send(
            "inference",
            {
                "window_s": 10.0,
                "frames": frames,
                "fps": frames / 10.0,
                "drops": 0,
                "latency_ms": {"p50": 4.0, "p95": 6.0},
                "errors": 0,
                "class_counts": {"cat": cats, "dog": dogs},
                "confidence_hist": {
                    "bins": [0.5, 0.75, 1.0],
                    "counts": [round(frames * (1 - confident)), round(frames * confident)],
                },
                "model": "animals",
                "version": self.version,
            },
        )

    def accuracy(self, cat: tuple[int, int], dog: tuple[int, int]) -> None:
        """Labelled frames per class as (support, true positives)."""
        per_class = {
            label: {
                "support": s,
                "true_positives": tp,
                "predicted": tp + (s - tp),
                "precision": 0.0,
                "recall": tp / s if s else 0.0,
                "f1": 0.0,
            }
            for label, (s, tp) in (("cat", cat), ("dog", dog))
        }
        labelled, correct = cat[0] + dog[0], cat[1] + dog[1]
        self.send(
            "accuracy",
            {
                "window_s": 10.0,
                "labelled": labelled,
                "correct": correct,
                "accuracy": correct / labelled,
                "per_class": per_class,
                "model": "animals",
                "version": self.version,
            },
        )

    def stored(self) -> bool:
        answer = self.registry.admin.get(f"/api/v1/devices/{self.id}").json()
        return bool(answer["seq"]["count"] >= self.seq)

    def close(self) -> None:
        self.client.publish(topic(self.id, "status"), b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def registry_with_model(registry: Any) -> Iterator[Any]:
    bundle, files = registry.make_bundle(version="1.0.0", drift_baseline=BASELINE)
    assert registry.push(bundle, files).status_code == 201
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    yield registry


def _firing(registry: Any, rule: str, device: Device) -> list[dict[str, Any]]:
    alerts = registry.admin.get("/api/v1/alerts", params={"rule": rule}).json()
    return [a for a in alerts if a["subject"] == f"device:{device.id}"]


def test_an_offline_device_fires_once_and_resolves_when_it_is_back(
    registry_with_model: Any,
) -> None:
    registry = registry_with_model
    device = Device(registry)
    try:
        device.status("offline")
        registry.wait_for(device.stored, what="the offline status stored")
        engine = registry.context.alerts
        engine.evaluate()
        engine.evaluate()  # still offline: the same alert, not a second one
        firing = _firing(registry, "device_offline", device)
        assert len(firing) == 1 and firing[0]["severity"] == "critical"
        assert "last will" in firing[0]["message"]
        device.status("online")
        registry.wait_for(device.stored, what="the online status stored")
        engine.evaluate()
        assert _firing(registry, "device_offline", device) == []
        resolved = registry.admin.get("/api/v1/alerts", params={"state": "resolved"}).json()
        assert any(a["subject"] == f"device:{device.id}" for a in resolved)
    finally:
        device.close()


def test_low_accuracy_and_a_recall_gap_fire_with_the_labels_behind_them(
    registry_with_model: Any,
) -> None:
    registry = registry_with_model
    device = Device(registry)
    try:
        device.status()
        device.inference(100, 100)
        # Dogs are recognised 95 % of the time, cats 45 %: 70 % overall, a 0.5 gap.
        for _ in range(2):
            device.accuracy(cat=(100, 45), dog=(100, 95))
        registry.wait_for(device.stored, what="windows stored")
        registry.context.alerts.evaluate()
        assert _firing(registry, "accuracy_low", device) == [], "one evaluation is not enough"
        registry.context.alerts.evaluate()
        (accuracy,) = _firing(registry, "accuracy_low", device)
        assert accuracy["value"] == pytest.approx(0.7)
        assert accuracy["data"]["labelled"] == 400
        (bias,) = _firing(registry, "bias", device)
        assert bias["value"] == pytest.approx(0.5)
        assert "dog" in bias["message"] and "cat" in bias["message"]
        quality = registry.admin.get(f"/api/v1/devices/{device.id}/quality").json()
        assert quality["per_class"]["cat"]["support"] == 200
        assert quality["per_class"]["cat"]["recall"] == pytest.approx(0.45)
        assert quality["recall_gap"]["worst"] == "cat"
        # Ten minutes later the window is empty: both resolve.
        registry.context.alerts.evaluate(now=utcnow() + timedelta(minutes=10))
        assert _firing(registry, "accuracy_low", device) == []
        assert _firing(registry, "bias", device) == []
    finally:
        device.close()


def test_drift_fires_after_consecutive_evaluations_and_not_on_a_steady_device(
    registry_with_model: Any,
) -> None:
    registry = registry_with_model
    drifting, steady = Device(registry), Device(registry)
    rng = np.random.default_rng(7)
    try:
        for device in (drifting, steady):
            device.status()
        for _ in range(5):
            drifting.inference(cats=570, dogs=30, confident=0.5)  # nearly all cats, unsure
            cats = int(rng.binomial(600, 0.5))
            steady.inference(cats=cats, dogs=600 - cats)
        for device in (drifting, steady):
            registry.wait_for(device.stored, what="windows stored")
        engine = registry.context.alerts
        engine.evaluate()
        assert _firing(registry, "drift", drifting) == [], "one evaluation is not enough"
        engine.evaluate()
        (alert,) = _firing(registry, "drift", drifting)
        assert {t["test"] for t in alert["data"]["tests"]} == {"chi2_classes", "ks_confidence"}
        assert alert["data"]["device_p_value"] < 1e-6
        assert _firing(registry, "drift", steady) == []
    finally:
        drifting.close()
        steady.close()


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_alerts_reach_the_webhook_once_and_silenced_ones_do_not(
    registry_with_model: Any,
) -> None:
    registry = registry_with_model
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    engine = registry.context.alerts
    engine.rules = engine.rules.model_copy(
        update={"webhook_url": f"http://127.0.0.1:{server.server_address[1]}/hook"}
    )
    loud, muted = Device(registry), Device(registry)
    try:
        silence = registry.admin.post(
            "/api/v1/silences",
            json={
                "subject": f"device:{muted.id}",
                "duration_s": 600,
                "reason": "camera replaced",
            },
        )
        assert silence.status_code == 201, silence.text
        for device in (loud, muted):
            device.status("offline")
            registry.wait_for(device.stored, what="status stored")
        engine.evaluate()
        engine.evaluate()
        subjects = [(b["event"], b["alert"]["subject"]) for b in _Hook.received]
        assert subjects.count(("fired", f"device:{loud.id}")) == 1
        assert all(s != f"device:{muted.id}" for _, s in subjects)
        (muted_alert,) = _firing(registry, "device_offline", muted)
        assert muted_alert["silenced"]
        (loud_alert,) = _firing(registry, "device_offline", loud)
        acked = registry.admin.post(
            f"/api/v1/alerts/{loud_alert['id']}/ack", json={"note": "on it"}
        )
        assert acked.json()["acknowledged_by"] == "admin"
        loud.status("online")
        registry.wait_for(loud.stored, what="status stored")
        engine.evaluate()
        assert ("resolved", f"device:{loud.id}") in [
            (b["event"], b["alert"]["subject"]) for b in _Hook.received
        ]
    finally:
        server.shutdown()
        loud.close()
        muted.close()


def test_a_bad_silence_is_refused_and_changes_nothing(registry: Any) -> None:
    answer = registry.admin.post("/api/v1/silences", json={"duration_s": -5, "reason": ""})
    assert answer.status_code == 422
    assert registry.admin.get("/api/v1/silences").json() == []


def test_the_statistics_match_their_textbook_values() -> None:
    assert stats.chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-5)
    assert stats.chi2_sf(11.0705, 5) == pytest.approx(0.05, abs=1e-4)
    assert stats.chi2_sf(0.0, 3) == 1.0
    assert stats.ks_sf(1.358) == pytest.approx(0.05, abs=1e-3)
    assert stats.benjamini_hochberg([0.001, 0.008, 0.039, 0.041, 0.9], 0.05) == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert stats.psi([50, 50], [50, 50]) == pytest.approx(0.0)


def test_the_alerts_commands_list_acknowledge_and_refuse_a_silence_of_everything(
    registry_with_model: Any,
) -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    registry = registry_with_model
    runner = CliRunner(env={"COLUMNS": "240"})
    auth = ["--registry", registry.url, "--token", registry.context.admin_token]
    device = Device(registry)
    try:
        device.status("offline")
        registry.wait_for(device.stored, what="status stored")
        registry.context.alerts.evaluate()
        listed = runner.invoke(app, ["alerts", *auth])
        assert listed.exit_code == 0, listed.output
        assert device.id in listed.output and "device_offline" in listed.output
        (alert,) = _firing(registry, "device_offline", device)
        acked = runner.invoke(app, ["alerts", "ack", str(alert["id"]), "--note", "driving", *auth])
        assert acked.exit_code == 0, acked.output
        assert _firing(registry, "device_offline", device)[0]["acknowledged_by"] == "admin"
        refused = runner.invoke(app, ["alerts", "silence", "--reason", "quiet", *auth])
        assert refused.exit_code != 0 and "refused" in refused.output
        assert registry.admin.get("/api/v1/silences").json() == []
    finally:
        device.close()
