"""The model card's audit document: exactly what happened to one version, and nothing else.

Every test runs on SQLite and PostgreSQL (the ``registry`` fixture). Versions
are pushed, aliases moved and rollouts driven through the API; devices report
through the real ingest worker, with payloads from the contract's encoder.
Arrival times are checked against clock readings taken around each delivery,
never against a duration.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from typer.testing import CliRunner

from corral.bundle import Bundle, BundleFile, InputSpec, OutputSpec
from corral.cli import app
from corral.payloads import encode
from corral.topics import topic
from registry.mqtt import IncomingMessage
from registry.retention import Retention, RetentionPolicy

V1, V2 = "1.0.0", "1.1.0"
FP32, INT8 = b"fp32 weights " * 64, b"int8 weights " * 32
METRICS = {
    "split": "test",
    "samples": 2000,
    "accuracy": 0.94,
    "macro_f1": 0.939,
    "recall_gap": 0.06,
    "expected_calibration_error": 0.021,
    "per_class": {
        "cat": {"precision": 0.96, "recall": 0.91, "f1": 0.934, "support": 1000},
        "dog": {"precision": 0.915, "recall": 0.97, "f1": 0.942, "support": 1000},
    },
    "confusion": [[910, 90], [30, 970]],
}
LINEAGE_V1 = {
    "dataset_version": "d" * 64,
    "dataset": {"version": "d" * 64, "manifest_sha256": "d" * 64, "samples": 12000},
    "code_commit": "1f2e3d4c5b6a",
    "code_dirty": False,
    "hyperparameters": {"epochs": 8, "lr": 0.002, "seed": 7},
    "trainer_version": "0.1.0",
}
LINEAGE_V2 = {
    "dataset_version": "e" * 64,
    "dataset": {"version": "e" * 64, "manifest_sha256": "e" * 64, "samples": 12400},
    "code_commit": "9a8b7c6d5e4f",
    "code_dirty": True,
    "hyperparameters": {"epochs": 10, "lr": 0.001, "seed": 7},
    "search": {
        "mode": "random",
        "best_trial": 1,
        "trials": [
            {"trial": 0, "params": {"width": 16}, "validation_accuracy": 0.91},
            {"trial": 1, "params": {"width": 32}, "validation_accuracy": 0.93},
        ],
    },
    "parent": {"name": "animals", "version": V1, "ref": f"animals@{V1}", "init_weights": True},
    "trainer_version": "0.1.0",
}


def card_bundle(version: str, lineage: dict[str, Any]) -> tuple[bytes, dict[str, bytes]]:
    """bundle.json with an fp32 and an int8 variant, the metrics and the lineage."""
    files = {"model.onnx": FP32, "model.int8.onnx": INT8}
    variants = {"model.onnx": "fp32", "model.int8.onnx": "int8"}
    bundle = Bundle(
        name="animals",
        version=version,
        input=InputSpec(name="input", shape=[None, 1, 28, 28]),
        output=OutputSpec(name="logits", labels=["cat", "dog"]),
        files=[
            BundleFile(
                name=n, sha256=hashlib.sha256(d).hexdigest(), length=len(d), variant=variants[n]
            )
            for n, d in files.items()
        ],
        metrics=METRICS,
        lineage=lineage,
        created="2025-03-01T08:00:00Z",
    )
    return bundle.to_bytes(), files


class Reporter:
    """Feeds a device's payloads through the registry's real ingest, numbering its seqs."""

    def __init__(self, registry: Any, device_id: str) -> None:
        self.registry, self.device_id, self.seq = registry, device_id, 0

    def send(self, kind: str, body: dict[str, Any], ts: str | None = None) -> None:
        self.seq += 1
        raw = encode(kind, self.device_id, self.seq, body, ts=ts)
        self.registry.context.ingest.submit(
            IncomingMessage(topic(self.device_id, kind), raw, lambda: None)
        )

    def status(self, version: str, model: str = "animals") -> None:
        self.send(
            "status", {"state": "online", "model": model, "version": version, "profile": None}
        )

    def inference(self, version: str, model: str = "animals", ts: str | None = None) -> None:
        body = {
            "window_s": 10.0,
            "frames": 100,
            "fps": 10.0,
            "latency_ms": {"p50": 4.0, "p95": 6.0},
            "drops": 0,
            "class_counts": {"cat": 60, "dog": 40},
            "model": model,
            "version": version,
        }
        self.send("inference", body, ts)

    def event(self, event: str, **fields: Any) -> None:
        self.send("events", {"event": event, "message": f"{event} {fields}", **fields})


def wait_stored(registry: Any, n: int) -> None:
    """Wait until the ingest worker has stored ``n`` messages in all."""
    registry.wait_for(
        lambda: registry.context.ingest.counts.get("stored", 0) >= n, what=f"{n} stored messages"
    )


def _ms(t: datetime) -> datetime:
    """``t`` cut to milliseconds, as the document writes times."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def tick_until(registry: Any, rollout_id: int, state: str) -> dict[str, Any]:
    def reached() -> dict[str, Any]:
        registry.context.rollouts.tick()
        seen = registry.admin.get(f"/api/v1/rollouts/{rollout_id}").json()
        return seen if seen["state"] == state else {}

    return dict(registry.wait_for(reached, what=f"rollout {rollout_id} {state}"))


def move_alias(registry: Any, alias: str, version: str, reason: str) -> None:
    path = f"/api/v1/models/animals/aliases/{alias}"
    answer = registry.admin.put(path, json={"version": version, "reason": reason})
    assert answer.status_code == 200, answer.text


def audit_of(registry: Any, version: str) -> dict[str, Any]:
    answer = registry.admin.get(f"/api/v1/models/animals/{version}/audit")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_audit_holds_exactly_what_happened_to_the_version(registry: Any) -> None:
    v1_bytes, v1_files = card_bundle(V1, LINEAGE_V1)
    v2_bytes, v2_files = card_bundle(V2, LINEAGE_V2)
    assert registry.push(v1_bytes, v1_files).status_code == 201
    assert registry.push(v2_bytes, v2_files).status_code == 201
    cam_a, cam_b, cam_c = (registry.unique_id(p) for p in ("cam-a", "cam-b", "cam-c"))
    for device in (cam_a, cam_b, cam_c):
        registry.enrol(device)
    a, b, c = Reporter(registry, cam_a), Reporter(registry, cam_b), Reporter(registry, cam_c)

    # Every camera starts on 1.0.0; cam-c ran another model's 1.1.0 before (not ours).
    a.status(V1)
    b.status(V1)
    c.inference(V2, model="other")
    c.status(V1)
    c.event("installed", model="animals", version=V1)
    wait_stored(registry, 5)

    move_alias(registry, "production", V1, "first release")
    move_alias(registry, "staging", V2, "candidate: more night frames")

    # A staging rollout of 1.1.0 to cam-a, which installs it; then it is signed off.
    plan = {
        "model": "animals",
        "version": V2,
        "environment": "staging",
        "selector": {"devices": [cam_a]},
        "stages": [{"name": "all"}],
    }
    created = registry.admin.post("/api/v1/rollouts", json=plan)
    assert created.status_code == 201, created.text
    staging_id = created.json()["id"]
    before_a = datetime.now(UTC)
    a.event("installed", model="animals", version=V2)
    a.status(V2)
    wait_stored(registry, 7)
    after_a = datetime.now(UTC)
    tick_until(registry, staging_id, "succeeded")
    signed = registry.admin.post(f"/api/v1/rollouts/{staging_id}/approve", json={"note": "ok"})
    assert signed.status_code == 200, signed.text

    move_alias(registry, "production", V2, "staging signed off")
    move_alias(registry, "champion", V1, "the baseline to beat")  # not about 1.1.0

    # A production rollout to cam-b that waits for approval, and is aborted instead.
    plan = {
        **plan,
        "environment": "production",
        "mode": "approval",
        "selector": {"devices": [cam_b]},
    }
    created = registry.admin.post("/api/v1/rollouts", json=plan)
    assert created.status_code == 201, created.text
    production_id = created.json()["id"]
    b.status(V2)
    b.inference(V2)
    wait_stored(registry, 9)
    waiting = tick_until(registry, production_id, "waiting_approval")
    aborted = registry.admin.post(
        f"/api/v1/rollouts/{production_id}/abort", json={"note": "wrong site"}
    )
    assert aborted.status_code == 200, aborted.text
    b.event("rolled_back", model="animals", version=V2, to_model="animals", to_version=V1)
    b.status(V1)
    before_last = datetime.now(UTC)
    a.inference(V2)
    wait_stored(registry, 12)
    after_last = datetime.now(UTC)
    tick_until(registry, production_id, "aborted")

    audit = audit_of(registry, V2)
    assert audit["format"] == "corral.model-audit/1"

    bundle = audit["bundle"]
    assert (bundle["name"], bundle["version"], bundle["created"]) == (
        "animals",
        V2,
        "2025-03-01T08:00:00Z",
    )
    assert bundle["bundle_sha256"] == hashlib.sha256(v2_bytes).hexdigest()
    assert bundle["bundle_length"] == len(v2_bytes)
    assert bundle["files"] == [
        {
            "name": "model.int8.onnx",
            "sha256": hashlib.sha256(INT8).hexdigest(),
            "length": len(INT8),
            "variant": "int8",
        },
        {
            "name": "model.onnx",
            "sha256": hashlib.sha256(FP32).hexdigest(),
            "length": len(FP32),
            "variant": "fp32",
        },
    ]
    assert (bundle["variants"], bundle["labels"]) == (["fp32", "int8"], ["cat", "dog"])

    assert audit["lineage"] == LINEAGE_V2
    assert audit["metrics"] == METRICS
    assert audit["origin"] == {
        "dataset_version": "e" * 64,
        "dataset_manifest_sha256": "e" * 64,
        "code_commit": "9a8b7c6d5e4f",
        "code_dirty": True,
        "trainer_version": "0.1.0",
        "search_trials": 2,
        "parent_name": "animals",
        "parent_version": V1,
        "parent_registered": True,
    }

    aliases = audit["aliases"]
    assert [(x["alias"], x["version"], x["moved_by"]) for x in aliases["current"]] == [
        ("production", V2, "admin"),
        ("staging", V2, "admin"),
    ]
    assert [
        (m["alias"], m["from_version"], m["to_version"], m["moved_by"], m["reason"])
        for m in aliases["moves"]
    ] == [
        ("staging", None, V2, "admin", "candidate: more night frames"),
        ("production", V1, V2, "admin", "staging signed off"),
    ]

    assert [
        (x["rollout_id"], x["environment"], x["stage"], x["actor"], x["note"])
        for x in audit["approvals"]
    ] == [(staging_id, "staging", None, "admin", "ok")]

    staging, production = audit["rollouts"]
    assert (staging["id"], staging["environment"], staging["state"], staging["created_by"]) == (
        staging_id,
        "staging",
        "succeeded",
        "admin",
    )
    assert (staging["verdict"], staging["devices"], staging["mode"]) == ("", 1, "continuous")
    assert [(s["name"], s["devices"], s["progress"], s["decision"]) for s in staging["stages"]] == [
        ("all", 1, {"converged": 1}, "pass")
    ]
    assert staging["finished_at"] is not None
    assert (production["id"], production["state"], production["verdict"]) == (
        production_id,
        "aborted",
        "aborted",
    )
    assert production["reason"] == "aborted by admin: wrong site"
    assert production["mode"] == "approval"
    assert production["stages"][0]["progress"] == {"restored": 1}
    assert production["stages"][0]["decision"] == waiting["stages"][0]["gates"]["decision"]
    assert audit["shadow_trials"] == []

    devices = {d["device_id"]: d for d in audit["devices"]}
    assert set(devices) == {cam_a, cam_b}, "cam-c never ran animals 1.1.0"
    first_a, last_a = _at(devices[cam_a]["first_seen"]), _at(devices[cam_a]["last_seen"])
    assert _ms(before_a) <= first_a <= after_a
    assert _ms(before_last) <= last_a <= after_last
    assert devices[cam_a]["exact"] and devices[cam_a]["runs_now"]
    assert (devices[cam_a]["version"], devices[cam_a]["desired_version"]) == (V2, V2)
    assert devices[cam_b]["exact"] and not devices[cam_b]["runs_now"]
    assert (devices[cam_b]["version"], devices[cam_b]["desired_version"]) == (V1, V1)
    assert _at(devices[cam_b]["first_seen"]) <= _at(devices[cam_b]["last_seen"]) < before_last

    events = audit["device_events"]
    assert events["total"] == 2
    assert [(e["device_id"], e["event"]) for e in events["items"]] == [
        (cam_a, "installed"),
        (cam_b, "rolled_back"),
    ]

    assert [(e["action"], e["target"]) for e in audit["audit"]] == [
        ("model.push", f"animals/{V2}"),
        ("alias.move", "animals/staging"),
        ("rollout.create", f"rollout:{staging_id}"),
        ("rollout.approve", f"rollout:{staging_id}"),
        ("alias.move", "animals/production"),
        ("rollout.create", f"rollout:{production_id}"),
        ("rollout.abort", f"rollout:{production_id}"),
    ]
    assert all(e["actor"] == "admin" for e in audit["audit"])

    # The same history, seen from 1.0.0: every camera ran it, cam-b again now.
    first = audit_of(registry, V1)
    assert {d["device_id"]: d["runs_now"] for d in first["devices"]} == {
        cam_a: False,
        cam_b: True,
        cam_c: True,
    }
    assert [(x["alias"], x["version"]) for x in first["aliases"]["current"]] == [("champion", V1)]
    assert [
        (m["alias"], m["from_version"], m["to_version"]) for m in first["aliases"]["moves"]
    ] == [
        ("production", None, V1),
        ("production", V1, V2),
        ("champion", None, V1),
    ]
    assert first["rollouts"] == [] and first["approvals"] == []
    assert first["origin"]["parent_version"] is None
    assert first["origin"]["search_trials"] == 0
    assert [(e["device_id"], e["event"]) for e in first["device_events"]["items"]] == [
        (cam_c, "installed"),
        (cam_b, "rolled_back"),
    ]
    assert [e["action"] for e in first["audit"]] == [
        "model.push",
        "alias.move",
        "alias.move",
        "alias.move",
    ]


def test_a_viewer_reads_the_audit_and_nobody_else_does(registry: Any) -> None:
    bundle, files = registry.make_bundle(version=V1)
    assert registry.push(bundle, files).status_code == 201
    device = registry.unique_id("cam")
    device_token = registry.enrol(device)["device_token"]
    path = f"/api/v1/models/animals/{V1}/audit"
    with registry.client(registry.api_token("viewer")) as viewer:
        answer = viewer.get(path)
        assert answer.status_code == 200, answer.text
        assert answer.json()["bundle"]["version"] == V1
        assert answer.json()["devices"] == [] and answer.json()["rollouts"] == []
        missing = viewer.get("/api/v1/models/animals/9.9.9/audit")
        assert missing.status_code == 404
        assert missing.json()["detail"] == (
            "no model animals 9.9.9, so no audit for it; `corral model list` shows what exists"
        )
        assert viewer.get("/api/v1/models/nobody/1.0.0/audit").status_code == 404
    assert registry.anon.get(path).status_code == 403
    with registry.client(device_token) as as_device:
        assert as_device.get(path).status_code == 403, "a device must not see the fleet"


def _hour(t: datetime) -> datetime:
    return datetime.fromtimestamp(math.floor(t.timestamp() / 3600) * 3600, UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_first_and_last_seen_come_from_buckets_once_raw_reports_expire(registry: Any) -> None:
    bundle, files = registry.make_bundle(version=V1)
    assert registry.push(bundle, files).status_code == 201
    device = registry.unique_id("cam")
    registry.enrol(device)
    reporter = Reporter(registry, device)
    # Reports timed by the device three and one hours ago (its backlog, sent now).
    now = datetime.now(UTC)
    early, late = now - timedelta(hours=3), now - timedelta(hours=1)
    before = datetime.now(UTC)
    reporter.inference(V1, ts=_iso(early))
    reporter.inference(V1, ts=_iso(late))
    wait_stored(registry, 2)
    after = datetime.now(UTC)

    (raw,) = audit_of(registry, V1)["devices"]
    assert raw["exact"], "raw reports: their arrival times"
    assert _ms(before) <= _at(raw["first_seen"]) <= _at(raw["last_seen"]) <= after

    # Eight days on, retention has folded the reports into hourly buckets and
    # deleted the raw rows: the span becomes the buckets' edges.
    report = Retention(registry.context.sessions, RetentionPolicy()).run(
        now=now + timedelta(days=8)
    )
    assert (report.folded, report.expired_raw) == (2, 2)
    (folded,) = audit_of(registry, V1)["devices"]
    assert not folded["exact"]
    assert folded["first_seen"] == _iso(_hour(early))
    assert folded["last_seen"] == _iso(_hour(late) + timedelta(hours=1))
    assert folded["runs_now"], "its summary still names the version"


def test_the_cli_writes_the_audit_and_prints_a_card(registry: Any, tmp_path: Any) -> None:
    v1_bytes, v1_files = card_bundle(V1, LINEAGE_V1)
    v2_bytes, v2_files = card_bundle(V2, LINEAGE_V2)
    assert registry.push(v1_bytes, v1_files).status_code == 201
    assert registry.push(v2_bytes, v2_files).status_code == 201
    move_alias(registry, "production", V2, "night frames")
    device = registry.unique_id("cam")
    registry.enrol(device)
    Reporter(registry, device).status(V2)
    wait_stored(registry, 1)

    runner = CliRunner(env={"COLUMNS": "200"})
    auth = ["--registry", registry.url, "--token", registry.api_token("viewer")]
    out = tmp_path / "audit.json"
    written = runner.invoke(app, ["model", "audit", f"animals@{V2}", "--out", str(out), *auth])
    assert written.exit_code == 0, written.output
    saved = json.loads(out.read_text())
    served = audit_of(registry, V2)
    assert {k: v for k, v in saved.items() if k != "generated_at"} == {
        k: v for k, v in served.items() if k != "generated_at"
    }
    printed = runner.invoke(app, ["model", "audit", f"animals@{V2}", *auth])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["bundle"]["version"] == V2

    card = runner.invoke(app, ["model", "card", f"animals@{V2}", *auth])
    assert card.exit_code == 0, card.output
    for fact in (
        "animals 1.1.0",
        "94.0 %",
        "0.060",
        "9a8b7c6d5e4f",
        "dirty",
        f"animals@{V1}",
        "production",
        "night frames",
        device,
        "cat",
        "0.910",
    ):
        assert fact in card.output, (fact, card.output)

    for ref, message in (("animals", "NAME@VERSION"), (f"animals@{'9.9.9'}", "no model animals")):
        refused = runner.invoke(app, ["model", "card", ref, *auth])
        assert refused.exit_code == 2 and message in refused.output, refused.output
