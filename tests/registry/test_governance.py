"""Governance: an alert, a policy, an action: notify, pin the previous model, retrain.

Against a real registry, broker and database; the retraining runs the real
trainer in a child process on the real Animal-MNIST, from a parent trained
here, and the candidate it pushes goes out through a normal rollout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from registry.governance import Policy
from tests.registry.test_alerts import Device

pytestmark = pytest.mark.usefixtures("broker")


def _wait_action(registry: Any, state: str, timeout: float = 30.0) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal found
        actions = registry.admin.get("/api/v1/actions").json()
        found = actions[0] if actions else {}
        return bool(found) and found["state"] in (state, "failed")

    registry.wait_for(reached, timeout=timeout, what=f"an action {state}")
    assert found["state"] == state, found
    return found


def _offline(registry: Any, device: Device) -> None:
    device.status("offline")
    registry.wait_for(device.stored, what="status stored")
    registry.context.alerts.evaluate()


def test_a_notify_policy_records_the_alert_it_saw_in_the_audit_log(registry: Any) -> None:
    governance = registry.context.governance
    governance.policies = [Policy(name="page", rule="device_offline", action="notify")]
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    device = Device(registry)
    try:
        _offline(registry, device)
        action = _wait_action(registry, "done")
        assert (action["policy"], action["subject"]) == ("page", f"device:{device.id}")
        audit = registry.admin.get("/api/v1/audit", params={"limit": 50}).json()
        assert {"policy.trigger", "policy.done"} <= {e["action"] for e in audit}
        registry.context.alerts.evaluate()  # still firing: no second action
        assert len(registry.admin.get("/api/v1/actions").json()) == 1
    finally:
        device.close()


def test_pin_previous_waits_for_approval_then_moves_the_device_back(registry: Any) -> None:
    for version in ("1.0.0", "1.1.0"):
        bundle, files = registry.make_bundle(version=version)
        assert registry.push(bundle, files).status_code == 201
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    governance = registry.context.governance
    governance.policies = [
        Policy(name="pin", rule="accuracy_low", action="pin_previous", approval=True)
    ]
    device = Device(registry)
    try:
        device.status()
        registry.wait_for(device.stored, what="status stored")
        moved = registry.admin.post(
            "/api/v1/rollouts",
            json={"model": "animals", "version": "1.1.0", "devices": [device.id]},
        )
        assert moved.status_code == 201, moved.text
        device.version = "1.1.0"
        device.status()
        device.inference(50, 50)
        device.accuracy(cat=(100, 50), dog=(100, 60))
        registry.wait_for(device.stored, what="windows stored")
        registry.context.alerts.evaluate()
        registry.context.alerts.evaluate()  # accuracy must hold twice
        pending = _wait_action(registry, "pending")
        time.sleep(1)
        assert registry.admin.get(f"/api/v1/devices/{device.id}/desired").json()["version"] == (
            "1.1.0"
        ), "nothing happens before the approval"
        approved = registry.admin.post(f"/api/v1/actions/{pending['id']}/approve")
        assert approved.status_code == 200, approved.text
        done = _wait_action(registry, "done")
        assert done["result"]["version"] == "1.0.0"
        desired = registry.admin.get(f"/api/v1/devices/{device.id}/desired").json()
        assert desired == {"model": "animals", "version": "1.0.0", "variant": None, "shadow": None}
        again = registry.admin.post(f"/api/v1/actions/{pending['id']}/approve")
        assert again.status_code == 409
    finally:
        device.close()


@pytest.fixture(scope="module")
def parent_and_feedback(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real cat-vs-dog bundle trained briefly, and labelled field pictures."""
    from trainer.pipeline import load_training_data, train_and_package
    from trainer.source import ANIMAL_CLASSES, load_animal_mnist
    from trainer.train import TrainConfig

    config = TrainConfig(epochs=1)
    parent = tmp_path_factory.mktemp("parent") / "animals-1.0.0"
    train_and_package(config, load_training_data(config).dataset, parent, "animals", "1.0.0")
    images, labels = load_animal_mnist()
    rng = np.random.default_rng(3)
    feedback = tmp_path_factory.mktemp("field") / "feedback"
    for name in ("cat", "dog"):
        (feedback / name).mkdir(parents=True)
        for n, row in enumerate(np.flatnonzero(labels == ANIMAL_CLASSES.index(name))[:30]):
            noisy = np.clip(
                images[row].astype(np.int16) + rng.integers(-9, 10, images[row].shape), 0, 255
            ).astype(np.uint8)
            Image.fromarray(noisy).save(feedback / name / f"{n}.png")
    return parent, feedback


# The database does not matter to the training; once is enough for the suite's time.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_retrain_policy_trains_pushes_and_rolls_out_a_candidate(
    registry: Any, parent_and_feedback: tuple[Path, Path]
) -> None:
    from corral.client import RegistryClient

    parent, feedback = parent_and_feedback
    with RegistryClient(registry.url, registry.context.admin_token) as client:
        client.push_model(parent)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    governance = registry.context.governance
    governance.registry_url = registry.url
    device = Device(registry)
    governance.policies = [
        Policy(
            name="retrain",
            rule="accuracy_low",
            action="retrain",
            data=str(feedback),
            epochs=1,
            selector={"devices": [device.id]},
        )
    ]
    try:
        device.status()
        device.inference(50, 50)
        device.accuracy(cat=(100, 40), dog=(100, 70))
        registry.wait_for(device.stored, what="windows stored")
        registry.context.alerts.evaluate()
        registry.context.alerts.evaluate()  # accuracy must hold twice
        done = _wait_action(registry, "done", timeout=300)
        assert done["result"]["parent"] == "1.0.0"
        assert done["result"]["version"] == "1.1.0"
        assert "retrain" in done["log"] and "***" in done["log"]
        assert registry.context.admin_token not in done["log"], "no secret in the log"
        model = registry.admin.get("/api/v1/models/animals/1.1.0").json()
        assert model["lineage"]["parent"]["version"] == "1.0.0"
        rollout = registry.admin.get(f"/api/v1/rollouts/{done['result']['rollout']}").json()
        assert rollout["version"] == "1.1.0"
        assert [d["device_id"] for d in rollout["devices"]] == [device.id]
    finally:
        device.close()
