"""Fixtures of the console tests: a real registry with simulated agents, and Chromium.

``world`` is one registry process (``corral registry serve`` through
:class:`corral.local.LocalFleet`) on the real Mosquitto at 127.0.0.1:1883,
six simulated agents (``agent.simulate.Fleet``: real enrolment, TUF installs,
outbox and MQTT link) running ``tiny 1.0.0``, and one more enrolled device,
``gpu``, whose reports (telemetry with a GPU, inference, accuracy) a thread
of this process publishes over MQTT with the real payload encoder, because
simulated agents send no telemetry. The registry evaluates its alert rules
every second, and one governance policy waits for an approval when the GPU
box goes offline (``test_browser.py`` makes it).

``browser`` is Debian's Chromium (``/usr/bin/chromium``) driven by
Playwright, headless. Playwright's own browser downloads are never used
(this machine and park sites are offline); without that Chromium every
browser test is skipped, loudly.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.simulate import Cohort, Fleet
from corral.local import LocalFleet
from corral.payloads import VariantFallback, encode, installed_event
from corral.topics import topic
from tests.agent.test_simulate import tiny_bundle

# test_api.py uses the registry tests' in-process registry (SQLite and PostgreSQL)
# and their broker check.
from tests.registry.conftest import broker, database_url, registry  # noqa: F401

MOSQUITTO = ("127.0.0.1", 1883)
CHROMIUM = Path(os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
AGENTS = 6
#: Governance: an offline GPU box gets a "notify" action that waits for an operator.
POLICY = {
    "name": "page-on-gpu-offline",
    "rule": "device_offline",
    "subject": "device:gpu-box-",
    "action": "notify",
    "approval": True,
}


def mosquitto_up() -> bool:
    """Whether the MQTT broker answers on 127.0.0.1:1883."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(MOSQUITTO) == 0


def console_bundle(out: Path, version: str) -> Path:
    """The simulator's tiny bundle, with the test metrics and lineage a trainer writes."""
    tiny_bundle(out, version)
    path = out / "bundle.json"
    bundle = json.loads(path.read_text())
    minor = int(version.split(".")[1])
    bundle["metrics"] = {
        "split": "test",
        "samples": 2000,
        "accuracy": 0.93 + 0.01 * minor,
        "macro_f1": 0.929 + 0.01 * minor,
        "recall_gap": 0.04 - 0.01 * minor,
        "per_class": {
            "cat": {"precision": 0.94, "recall": 0.91 + 0.01 * minor, "f1": 0.925, "support": 1000},
            "dog": {"precision": 0.92, "recall": 0.95, "f1": 0.935, "support": 1000},
        },
    }
    bundle["lineage"] = {
        "dataset_version": f"ds-{minor}a91c0e77f3",
        "code_commit": "3f9e2b71c0d4a5e6",
        "hyperparameters": {"epochs": 8 + minor, "width": 16, "lr": 0.002, "seed": 7},
        "trainer_version": "0.1.0",
    }
    path.write_text(json.dumps(bundle, indent=2))
    return out


class GpuBox:
    """Publishes the reports of one enrolled device with a GPU, every ``every_s`` seconds.

    The payloads go through :func:`corral.payloads.encode` and the real broker,
    exactly as an agent's would; only the numbers are made up (a slow warm-up
    of the GPU, a frame rate near 25). It runs the TensorRT variant ``VARIANT``
    until :meth:`fall_back` says that variant failed on a reinstall.
    """

    VARIANT = "trt-fp16-rtx-a2000-trt10.3"

    def __init__(self, device_id: str, every_s: float = 0.5) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.device_id = device_id
        self.every_s = every_s
        self.seq = 0
        self.variant = self.VARIANT
        self._lock = threading.Lock()  # the test thread sends status while _run reports
        self._stop = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"console-{device_id}")
        self._thread = threading.Thread(target=self._run, name="gpu-box", daemon=True)

    def start(self) -> None:
        self._client.connect(*MOSQUITTO)
        self._client.loop_start()
        self._send("status", self._status("online"))
        self._thread.start()

    def set_status(self, state: str) -> None:
        """Publish a retained status (``offline`` is what its last will would say)."""
        self._send("status", self._status(state))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._send("status", self._status("offline"))
        self._client.publish(topic(self.device_id, "status"), b"", qos=1, retain=True)
        self._client.disconnect()
        self._client.loop_stop()

    def fall_back(self) -> None:
        """Reinstall 1.0.0 as an agent whose TensorRT engine did not load would: on fp32."""
        failed = VariantFallback(self.VARIANT, "incompatible", "engine built for TensorRT 10.4")
        event = installed_event(
            "tiny", "1.0.0", seconds=1.5, smoke_diff=0.0, swap_ms=2.0, variant="fp32",
            fallback=failed,
        )  # fmt: skip
        self.variant = "fp32"
        self._send("events", event)
        self.set_status("online")

    def _status(self, state: str) -> dict[str, Any]:
        return {"state": state, "model": "tiny", "version": "1.0.0", "profile": "x86-nvidia",
                "variant": self.variant}  # fmt: skip

    def _send(self, kind: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.seq += 1
            self._client.publish(
                topic(self.device_id, kind),
                encode(kind, self.device_id, self.seq, body),
                qos=1,
                retain=kind == "status",
            )

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.every_s):
            t = time.monotonic() - started
            wave = (t % 20) / 20
            self._send(
                "telemetry",
                {
                    "cpu_percent": 35 + 10 * wave,
                    "memory_percent": 48.0,
                    "disk_percent": 61.0,
                    "temperatures": {},
                    "gpus": [
                        {
                            "index": 0,
                            "name": "RTX A2000",
                            "util_percent": 55 + 20 * wave,
                            "memory_used_mb": 2100,
                            "memory_total_mb": 6144,
                            "temp_c": min(78.0, 52 + t),
                            "power_w": 41.5,
                            "throttle_reasons": [],
                        }
                    ],
                },
            )
            frames = 12 + int(2 * wave)
            missed = 1 if wave > 0.5 else 0  # a dog taken for a cat
            cats, dogs = frames // 2, frames - frames // 2
            self._send(
                "inference",
                {
                    "window_s": self.every_s,
                    "frames": frames,
                    "fps": frames / self.every_s,
                    "latency_ms": {"p50": 6.1 + wave, "p95": 8.4 + 2 * wave, "p99": 11.0},
                    "drops": 0,
                    "queue_depth": 0,
                    "errors": 0,
                    "class_counts": {"cat": cats + missed, "dog": dogs - missed},
                    "model": "tiny",
                    "version": "1.0.0",
                },
            )
            self._send(
                "accuracy",
                {
                    "window_s": self.every_s,
                    "labelled": frames,
                    "correct": frames - missed,
                    "accuracy": (frames - missed) / frames,
                    "per_class": {
                        "cat": _class_figures(cats, cats + missed, cats),
                        "dog": _class_figures(dogs, dogs - missed, dogs - missed),
                    },
                    "model": "tiny",
                    "version": "1.0.0",
                },
            )


def _class_figures(support: int, predicted: int, true_positives: int) -> dict[str, Any]:
    """One class's accuracy figures as an agent reports them."""
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "predicted": predicted,
        "true_positives": true_positives,
    }


@dataclass
class World:
    """What the browser tests drive."""

    local: LocalFleet
    fleet: Fleet
    gpu: GpuBox
    operator_token: str
    viewer_token: str
    data: Path

    @property
    def url(self) -> str:
        return self.local.registry_url

    def wait_state(
        self, rollout_id: int, states: tuple[str, ...], timeout: float = 120
    ) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal seen
            with self.local.client() as client:
                seen = client.rollout(rollout_id)
            return seen["state"] in states

        self.local.wait_for(f"rollout {rollout_id} to be one of {states}", reached, timeout)
        return seen


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not mosquitto_up():
        pytest.skip("SKIPPED LOUDLY: no Mosquitto on 127.0.0.1:1883; scripts/test starts one")
    data = tmp_path_factory.mktemp("console")
    patch = pytest.MonkeyPatch()
    patch.setenv("CORRAL_ROLLOUT_INTERVAL_S", "0.5")
    patch.setenv("CORRAL_ALERTS__INTERVAL_S", "1")
    patch.setenv("CORRAL_POLICIES", json.dumps([POLICY]))
    run = uuid.uuid4().hex[:6]
    with LocalFleet(data, python=sys.executable) as local:
        local.start_broker(f"{MOSQUITTO[0]}:{MOSQUITTO[1]}")
        local.start_registry()
        with local.client() as client:
            for version in VERSIONS:
                client.push_model(console_bundle(data / version, version))
            operator = client.create_api_token(f"night-operator-{run}", "operator")["token"]
            viewer = client.create_api_token(f"viewer-{run}", "viewer")["token"]
            token = client.create_enrolment_token(600)["token"]
        gpu_id = f"gpu-box-{run}"
        answer = httpx.post(
            f"{local.registry_url}/api/v1/enrol",
            json={"token": token, "device_id": gpu_id, "profile": "x86-nvidia"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        fleet = Fleet(
            local.registry_url,
            local.admin_token,
            data / "agents",
            AGENTS,
            [Cohort("park", 1.0, fps=30, accuracy=0.92, latency_ms=6.0)],
            install_concurrency=3,
            report_interval_s=0.5,
            prefix=f"cam-{run}",
        )
        gpu = GpuBox(gpu_id)
        try:
            fleet.enrol()
            fleet.start()
            gpu.start()
            assert fleet.wait_connected(60)
            with local.client() as client:
                client.start_rollout("tiny", "1.0.0", fleet.device_ids)
            local.wait_converged("1.0.0", fleet.device_ids, timeout=90)
            yield World(local, fleet, gpu, operator, viewer, data)
        finally:
            gpu.stop()
            fleet.stop()
            patch.undo()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"SKIPPED LOUDLY: no Chromium at {CHROMIUM}; install Debian's (apt-get install "
            "chromium; scripts/test does as root) or set CORRAL_CHROMIUM. Playwright's own "
            "browser downloads are not used."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()
