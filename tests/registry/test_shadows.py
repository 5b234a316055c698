"""Shadow trials: who may start them, what devices are told, and how the figures add up."""

from __future__ import annotations

import math
from typing import Any

from corral.payloads import encode
from corral.topics import topic
from registry.mqtt import IncomingMessage
from registry.rollout.shadow import ShadowFigures, mcnemar_p


def _block(**counts: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "model": "animals",
        "version": "2.0.0",
        "frames": 100,
        "skipped": 0,
        "errors": 0,
        "agree": 90,
        "batches": 25,
        "run_ms": {"mean": 2.0, "p95": 3.0, "total": 50.0},
        "current_run_ms": {"mean": 1.0, "p95": 1.5, "total": 25.0},
        "labelled": 100,
        "correct": 95,
        "current_correct": 90,
        "only_shadow_correct": 7,
        "only_current_correct": 2,
    }
    return block | counts


def _enrol(registry: Any, device_id: str, **scope: Any) -> dict[str, Any]:
    token = registry.admin.post("/api/v1/enrolment-tokens", json=scope).json()["token"]
    answer = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": device_id})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_mcnemar_is_exact_on_few_discordant_pairs_and_symmetric() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0
    assert math.isclose(mcnemar_p(10, 0), 2 * 0.5**10)
    assert mcnemar_p(3, 9) == mcnemar_p(9, 3)
    assert mcnemar_p(20, 5) < 0.01 < mcnemar_p(12, 6)
    # Above 1,000 pairs the normal approximation takes over, continuously.
    assert math.isclose(mcnemar_p(530, 470), mcnemar_p(531, 470), rel_tol=0.2)
    assert mcnemar_p(600, 500) < 0.01


def test_figures_are_sums_over_windows_with_the_counts_behind_them() -> None:
    figures = ShadowFigures()
    figures.add(_block())
    figures.add(_block(frames=300, agree=300, run_ms={"total": 150.0, "p95": 5.0}, batches=75))
    figures.add({"model": "animals", "version": "2.0.0", "frames": "junk"})  # counts as 0
    summary = figures.summary()
    assert (summary["windows"], summary["frames"]) == (3, 400)
    assert summary["agreement"] == 0.975
    assert summary["agreement_low"] < 0.975 < summary["agreement_high"] <= 1
    # (50 + 150) ms of candidate against (25 + 25) ms of current model, on 100 batches.
    assert summary["latency"]["cost_ratio"] == 4.0
    assert summary["latency"]["shadow_ms_per_batch"] == 2.0
    accuracy = summary["accuracy"]
    assert (accuracy["labelled"], accuracy["shadow"], accuracy["current"]) == (200, 0.95, 0.9)
    assert accuracy["diff"] == 0.05
    assert accuracy["mcnemar_p"] == round(mcnemar_p(14, 4), 6)


def test_a_trial_sets_the_candidate_beside_the_desired_version_and_stops(registry: Any) -> None:
    bundle, files = registry.make_bundle("animals", "2.0.0")
    assert registry.push(bundle, files).status_code == 201
    tokens = {d: _enrol(registry, d, group="gate")["device_token"] for d in ("cam-1", "cam-2")}
    registry.enrol("cam-3")
    body = {"name": "gate-2", "model": "animals", "version": "2.0.0"}

    viewer = registry.client(registry.api_token("viewer"))
    refused = viewer.post("/api/v1/shadows", json={**body, "selector": {"group": "gate"}})
    assert refused.status_code == 403
    missing = registry.admin.post("/api/v1/shadows", json={**body, "version": "9.9.9"})
    assert missing.status_code == 404 and "push it first" in missing.json()["detail"]
    empty = registry.admin.post("/api/v1/shadows", json={**body, "selector": {"group": "nope"}})
    assert empty.status_code == 422

    started = registry.admin.post("/api/v1/shadows", json={**body, "selector": {"group": "gate"}})
    assert started.status_code == 201, started.text
    assert (started.json()["devices"], started.json()["state"]) == (2, "running")
    with registry.client(tokens["cam-1"]) as device:
        desired = device.get("/api/v1/devices/cam-1/desired").json()
    assert desired == {
        "model": None,
        "version": None,
        "variant": None,
        "shadow": {"model": "animals", "version": "2.0.0"},
    }
    assert registry.admin.get("/api/v1/devices/cam-3/desired").json()["shadow"] is None
    again = registry.admin.post(
        "/api/v1/shadows", json={**body, "name": "other", "selector": {"devices": ["cam-2"]}}
    )
    assert again.status_code == 409 and "stop that trial first" in again.json()["detail"]
    taken = registry.admin.post("/api/v1/shadows", json={**body, "selector": {"group": "gate"}})
    assert taken.status_code == 409

    # What the devices report in shadow, through the real ingest.
    for seq, device in enumerate(("cam-1", "cam-2", "cam-1"), start=1):
        inference = {
            "window_s": 5.0,
            "frames": 100,
            "fps": 20.0,
            "latency_ms": {"p50": 1.0, "p95": 2.0},
            "drops": 0,
            "class_counts": {"cat": 100},
            "model": "animals",
            "version": "1.0.0",
            "shadow": _block(agree=80 if device == "cam-2" else 95),
        }
        raw = encode("inference", device, seq, inference)
        registry.context.ingest.submit(
            IncomingMessage(topic(device, "inference"), raw, lambda: None)
        )

    def figures() -> dict[str, Any]:
        report = viewer.get("/api/v1/shadows/gate-2").json()
        return report if report["figures"]["windows"] == 3 else {}

    report = registry.wait_for(figures, what="three shadow windows stored")
    assert report["figures"]["frames"] == 300 and report["figures"]["agreement"] == 0.9
    per_device = {d["device_id"]: d for d in report["per_device"]}
    assert per_device["cam-1"]["agreement"] == 0.95 and per_device["cam-2"]["agreement"] == 0.8
    assert per_device["cam-1"]["current_versions"] == ["1.0.0"]
    assert [t["name"] for t in viewer.get("/api/v1/shadows").json()] == ["gate-2"]

    stopped = registry.admin.post("/api/v1/shadows/gate-2/stop")
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert stopped.json()["figures"]["windows"] == 3, "the figures stay"
    assert registry.admin.get("/api/v1/devices/cam-1/desired").json()["shadow"] is None
    assert registry.admin.post("/api/v1/shadows/gate-2/stop").status_code == 409
    assert registry.admin.get("/api/v1/shadows/nope").status_code == 404
    audit = registry.admin.get("/api/v1/audit").json()
    assert {"shadow.start", "shadow.stop"} <= {entry["action"] for entry in audit}
    viewer.close()
