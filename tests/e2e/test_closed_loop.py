"""The closed loop: a camera changes, an alert fires, a policy retrains, accuracy recovers.

A registry process, the real Mosquitto, one real agent process with a folder
camera of Animal-MNIST test pictures (its labels are the ground truth it
reports as accuracy windows), and v1.0.0 trained here on cat vs dog. Then
the camera's pictures are replaced in place by their negatives (a camera
whose exposure went wrong): accuracy falls, the ``accuracy_low`` alert fires,
the ``retrain`` policy trains v1.1.0 from v1.0.0 with labelled negatives
from the field, pushes it and rolls it out through a canary stage judged by
its gates, and accuracy on the changed camera comes back. Each step is
asserted, and the time each took is printed.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from corral.local import LocalFleet

pytestmark = pytest.mark.e2e

MOSQUITTO = ("127.0.0.1", 1883)
FIELD_PER_CLASS = 500


def _mosquitto_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(MOSQUITTO) == 0


def _negatives(images: np.ndarray, rows: np.ndarray, root: Path, label: str) -> None:
    (root / label).mkdir(parents=True, exist_ok=True)
    for n, row in enumerate(rows):
        Image.fromarray(255 - images[row]).save(root / label / f"{n}.png")


@pytest.fixture
def loop_env(tmp_path: Path) -> Iterator[Path]:
    """The registry's alert and policy settings for a fast loop, and the field feedback."""
    from trainer.source import ANIMAL_CLASSES, load_animal_mnist

    images, labels = load_animal_mnist()
    field = tmp_path / "field-feedback"
    for name in ("cat", "dog"):
        rows = np.flatnonzero(labels == ANIMAL_CLASSES.index(name))[-FIELD_PER_CLASS:]
        _negatives(images, rows, field, name)
    policy = {
        "name": "retrain-on-accuracy",
        "rule": "accuracy_low",
        "action": "retrain",
        "data": str(field),
        "epochs": 6,
        "stages": [
            {"name": "canary", "size": 1, "soak_s": 3, "min_labelled": 100, "timeout_s": 180}
        ],
    }
    patch = pytest.MonkeyPatch()
    for key, value in {
        "CORRAL_ALERTS__INTERVAL_S": "2",
        "CORRAL_ALERTS__WINDOW_S": "20",
        "CORRAL_ALERTS__MIN_LABELS": "100",
        "CORRAL_ALERTS__MIN_ACCURACY": "0.85",
        "CORRAL_ROLLOUT_INTERVAL_S": "1",
        "CORRAL_POLICIES": json.dumps([policy]),
    }.items():
        patch.setenv(key, value)
    yield field
    patch.undo()


def test_a_changed_camera_is_noticed_retrained_for_and_recovers(
    tmp_path: Path, loop_env: Path
) -> None:
    if not _mosquitto_up():
        pytest.skip("SKIPPED LOUDLY: no Mosquitto on 127.0.0.1:1883; scripts/test starts one")
    times: dict[str, float] = {}
    with LocalFleet(tmp_path / "run", python=sys.executable) as local:
        local.start_broker(f"{MOSQUITTO[0]}:{MOSQUITTO[1]}")
        local.start_registry()
        camera = tmp_path / "camera"
        started = time.monotonic()
        bundle = local.train("1.0.0", tmp_path / "v1", test_images=camera, epochs=6)
        times["train v1.0.0"] = time.monotonic() - started
        device = f"gate-{int(time.time()) % 100000}"
        with local.client() as client:
            client.push_model(bundle)
        local.start_agent(device, [f"folder:{camera}?fps=20"])
        with local.client() as client:
            client.start_rollout("animals", "1.0.0", [device])
        local.wait_converged("1.0.0", [device], timeout=120)

        def accuracy() -> float | None:
            with local.client() as client:
                quality = client._call(
                    "GET", f"/api/v1/devices/{device}/quality", params={"window_s": 15}
                )
            return quality["accuracy"] if quality["labelled"] >= 100 else None

        local.wait_for("v1.0.0 accuracy on the camera", lambda: (accuracy() or 0) > 0.9, 90)
        before = accuracy()

        # The camera's exposure goes wrong: every picture becomes its negative, in place.
        step = time.monotonic()
        for path in camera.rglob("*.png"):
            negative = 255 - np.asarray(Image.open(path))
            Image.fromarray(negative).save(path.with_suffix(".tmp.png"))
            path.with_suffix(".tmp.png").replace(path)

        def alert() -> dict[str, Any] | None:
            with local.client() as client:
                firing = client.alerts(rule="accuracy_low")
            return next((a for a in firing if a["subject"] == f"device:{device}"), None)

        local.wait_for("the accuracy alert", lambda: alert() is not None, 90)
        times["change -> accuracy alert"] = time.monotonic() - step
        fired = alert()
        assert fired is not None and fired["value"] < 0.85
        assert fired["data"]["labelled"] >= 100

        step = time.monotonic()

        def action() -> dict[str, Any]:
            with local.client() as client:
                actions = client.actions()
            return actions[0] if actions else {"state": "none"}

        local.wait_for("the retraining", lambda: action()["state"] in ("done", "failed"), 600)
        done = action()
        assert done["state"] == "done", done
        assert done["result"]["parent"] == "1.0.0" and done["result"]["version"] == "1.1.0"
        times["alert -> v1.1.0 trained and pushed"] = time.monotonic() - step

        step = time.monotonic()
        rollout_id = done["result"]["rollout"]

        def rollout_state() -> str:
            with local.client() as client:
                return str(client.rollout(rollout_id)["state"])

        local.wait_for(
            "the canary rollout to end",
            lambda: rollout_state() in ("succeeded", "failed", "aborted"),
            240,
        )
        with local.client() as client:
            rolled = client.rollout(rollout_id)
        assert rolled["state"] == "succeeded", rolled["reason"]
        accuracy_gate = next(
            g for g in rolled["stages"][0]["gates"]["results"] if g["name"] == "accuracy"
        )
        assert accuracy_gate["status"] == "pass"
        times["v1.1.0 rolled out (canary gates)"] = time.monotonic() - step

        step = time.monotonic()
        local.wait_for(
            "accuracy to recover on the changed camera", lambda: (accuracy() or 0) >= 0.85, 120
        )
        after = accuracy()
        times["rollout -> accuracy recovered"] = time.monotonic() - step
        local.wait_for("the alert to resolve", lambda: alert() is None, 60)
    print(f"\naccuracy: {before:.3f} before, {fired['value']:.3f} at the alert, {after:.3f} after")
    for what, seconds in times.items():
        print(f"  {what:<40} {seconds:6.1f} s")
