"""The whole agent run path against the real broker, with a fake updater at the install seam."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.config import AgentConfig
from agent.errors import CameraError, SmokeTestError
from agent.runtime import ModelRuntime
from agent.service import AgentService
from agent.slots import Slot, Slots
from agent.updater import InstallResult
from corral.payloads import Message, decode, encode
from corral.profiles import FirmwareProfile
from corral.topics import parse_topic, topic
from tests.agent.fixtures import broker_up, tiny_bundle, wait_for

HOST, PORT = "127.0.0.1", 1883
WAIT_S = 60.0


pytestmark = pytest.mark.skipif(
    not broker_up(HOST, PORT),
    reason=f"SERVICE TESTS SKIPPED: no MQTT broker at {HOST}:{PORT}; start mosquitto to run them",
)


class FakeUpdater:
    """The updater's seam: installs good versions from local folders, fails the "bad" ones."""

    def __init__(
        self,
        root: Path,
        bad: set[str],
        current: str | None = None,
        opposite: frozenset[str] = frozenset(),
    ) -> None:
        self.root = root
        self.bad = bad
        self.opposite = opposite  # versions that answer the other class
        self.calls: list[tuple[str, str]] = []
        self.shadow_calls: list[tuple[str, str]] = []
        self._current: Slot | None = None
        if current is not None:
            path = root / current
            self._current = Slot(f"tiny-{current}", path, tiny_bundle(path, current), "fp32")

    def current(self) -> Slot | None:
        return self._current

    def install(
        self, model: str, version: str, *, into: Slots | None = None, variant: str | None = None
    ) -> InstallResult:
        (self.calls if into is None else self.shadow_calls).append((model, version))
        if version in self.bad:
            raise SmokeTestError("smoke test: golden outputs differ by 3, more than 0.001")
        path = self.root / version
        bundle = tiny_bundle(path, version, sign=-1.0 if version in self.opposite else 1.0)
        runtime = ModelRuntime.load(bundle, path)
        if into is None:
            self._current = Slot(f"tiny-{version}", path, bundle, "fp32")
        return InstallResult(model, version, "fp32", path, 0.0, 0.25, runtime)


class Registry:
    """Serves GET /api/v1/devices/{id}/desired; records the Authorization headers,
    the client's address (its port tells one connection from another) and the
    ``time.monotonic()`` of each request.

    Args:
        keep_alive: speak HTTP/1.1 and keep connections open, as uvicorn does.
    """

    def __init__(self, keep_alive: bool = False) -> None:
        self.desired: dict[str, Any] = {"model": None, "version": None}
        self.auth: list[str | None] = []
        self.peers: list[tuple[str, int]] = []
        self.times: list[float] = []
        #: (status, headers) to answer instead of ``desired``, one per request, in
        #: order (a busy registry's problem answers). The headers are all that is
        #: sent besides the body's: no automatic ``Date``, so a test can set its own.
        self.answers: list[tuple[int, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.times.append(time.monotonic())
                outer.auth.append(self.headers.get("Authorization"))
                outer.peers.append(self.client_address)
                if outer.answers:
                    status, headers = outer.answers.pop(0)
                    problem = {"title": "Service Unavailable", "status": status}
                    body = json.dumps(problem).encode()
                    self.send_response_only(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body = json.dumps(outer.desired).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Watcher:
    """Records every Corral message of one device, decoded."""

    def __init__(self, device_id: str) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(HOST, PORT)
        self.client.subscribe(f"corral/v1/devices/{device_id}/+", qos=1)
        self.client.loop_start()
        assert subscribed.wait(WAIT_S)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload or message.retain:
            return
        _, kind = parse_topic(message.topic)
        if kind == "desired":
            return
        with self._lock:
            self.messages.append(decode(kind, message.payload))

    def of(self, kind: str, **fields: Any) -> list[Message]:
        with self._lock:
            return [
                m
                for m in self.messages
                if m.kind == kind and all(m.body.get(k) == v for k, v in fields.items())
            ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_retained(name: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(HOST, PORT)
    client.loop_start()
    client.publish(name, payload, qos=1, retain=True).wait_for_publish(WAIT_S)
    client.disconnect()
    client.loop_stop()


def make_images(root: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        level = int(rng.integers(0, 256))
        label = "bright" if level > 100 else "dark"
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{i}.png"), np.full((28, 28), level, np.uint8))
    return root


@pytest.fixture
def device_id() -> Iterator[str]:
    device = f"svc-{uuid.uuid4().hex[:12]}"
    yield device
    for kind in ("status", "desired"):
        publish_retained(topic(device, kind), b"")


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = Registry()
    yield server
    server.close()


def make_service(
    tmp_path: Path,
    device_id: str,
    registry: Registry,
    updater: FakeUpdater,
    poll_s: float = 60.0,
    cameras: list[str] | None = None,
    **options: Any,
) -> AgentService:
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        device_id=device_id,
        device_token="device-secret",
        registry_url=registry.url,
        mqtt_host=HOST,
        mqtt_port=PORT,
        metadata_url=registry.url + "/tuf/",
        targets_url=registry.url + "/targets/",
        report_interval_s=0.3,
        poll_interval_s=poll_s,
    )
    profile = FirmwareProfile.from_dict(
        {"name": "test", "runtime": {"batch_size": 4}, "telemetry": {"interval_s": 0.3}}
    )
    images = make_images(tmp_path / "imgs")
    return AgentService(
        config.data_dir,
        cameras or [f"folder:{images}?fps=100", f"folder:{images}?fps=100&seed=7"],
        config=config,
        profile=profile,
        updater=updater,
        **options,
    )


def test_desired_hint_installs_swaps_reports_and_a_bad_version_is_not_retried(
    tmp_path: Path, device_id: str, registry: Registry
) -> None:
    updater = FakeUpdater(tmp_path / "models", bad={"9.9.9"})
    service = make_service(tmp_path, device_id, registry, updater)
    watcher = Watcher(device_id)
    service.start()
    try:
        assert wait_for(lambda: watcher.of("status", state="online"))
        assert watcher.of("status")[0].body["version"] is None
        assert service.healthy(), "what feeds the systemd watchdog"
        assert wait_for(lambda: watcher.of("telemetry"))
        publish_retained(
            topic(device_id, "desired"),
            encode("desired", "registry", 1, {"model": "tiny", "version": "1.0.0"}),
        )
        assert wait_for(lambda: watcher.of("events", event="installed"))
        event = watcher.of("events", event="installed")[0].body
        assert (event["model"], event["version"], event["seconds"]) == ("tiny", "1.0.0", 0.25)
        assert event["swap_ms"] >= 0 and event["smoke_diff"] == 0.0
        assert event["variant"] == "fp32" and "fallback" not in event
        assert wait_for(lambda: watcher.of("status", state="online", version="1.0.0"))
        assert watcher.of("status", state="online", version="1.0.0")[-1].body["variant"] == "fp32"
        assert wait_for(
            lambda: [m for m in watcher.of("inference", version="1.0.0") if m.body["frames"]]
        )
        assert wait_for(
            lambda: [m for m in watcher.of("accuracy", version="1.0.0") if m.body["labelled"]]
        )
        accuracy = next(m for m in watcher.of("accuracy", version="1.0.0") if m.body["labelled"])
        assert 0 <= accuracy.body["correct"] <= accuracy.body["labelled"]

        publish_retained(
            topic(device_id, "desired"),
            encode("desired", "registry", 2, {"model": "tiny", "version": "9.9.9"}),
        )
        assert wait_for(lambda: watcher.of("events", event="install_failed"))
        failed = watcher.of("events", event="install_failed")[0].body
        assert (failed["reason"], failed["version"]) == ("smoke_test", "9.9.9")
        assert "golden" in failed["message"]
        # The hint stays; reconciling again does not retry inside the backoff.
        service.reconcile()
        service.reconcile()
        assert updater.calls.count(("tiny", "9.9.9")) == 1
        assert service.installed == ("tiny", "1.0.0")
        # The registry issuing the same hint anew (a new rollout, higher seq) is an
        # operator asking again: the version is tried at once, backoff or not.
        publish_retained(
            topic(device_id, "desired"),
            encode("desired", "registry", 3, {"model": "tiny", "version": "9.9.9"}),
        )
        assert wait_for(lambda: updater.calls.count(("tiny", "9.9.9")) == 2)
        assert service.installed == ("tiny", "1.0.0")
        frames = service.pipeline.frames_total if service.pipeline else 0
        assert wait_for(
            lambda: service.pipeline is not None and service.pipeline.frames_total > frames
        )
    finally:
        service.stop()
    assert not service.healthy()
    assert wait_for(lambda: watcher.of("status", state="offline"))
    watcher.close()
    seqs = sorted(m.seq for m in watcher.messages)
    assert seqs == list(range(len(seqs))), "every seq arrived once, no gap"


def test_poll_fallback_installs_over_the_model_installed_at_start(
    tmp_path: Path, device_id: str, registry: Registry
) -> None:
    updater = FakeUpdater(tmp_path / "models", bad=set(), current="1.0.0")
    registry.desired = {"model": "tiny", "version": "1.1.0"}
    service = make_service(tmp_path, device_id, registry, updater, poll_s=0.2)
    watcher = Watcher(device_id)
    service.start()
    try:
        assert wait_for(lambda: watcher.of("status", version="1.0.0"))
        assert wait_for(lambda: watcher.of("events", event="installed", version="1.1.0"))
        assert wait_for(lambda: watcher.of("inference", version="1.1.0"))
        assert service.pipeline is not None
        assert service.pipeline.swaps[0].old == ("tiny", "1.0.0")
    finally:
        service.stop()
        watcher.close()
    assert registry.auth and set(registry.auth) == {"Bearer device-secret"}
    assert updater.calls == [("tiny", "1.1.0")]


def test_the_desired_poll_keeps_one_connection_to_the_registry(
    tmp_path: Path, device_id: str
) -> None:
    # A request per poll through httpx.get built a client, and an SSL context
    # loaded with the whole CA bundle, every poll; left to the cycle collector,
    # they piled up and fragmented the heap (the agent.rss_slope_mb_per_h soak).
    registry = Registry(keep_alive=True)
    updater = FakeUpdater(tmp_path / "models", bad=set(), current="1.0.0")
    registry.desired = {"model": "tiny", "version": "1.0.0"}
    service = make_service(tmp_path, device_id, registry, updater, poll_s=0.05)
    service.start()
    try:
        assert wait_for(lambda: len(registry.peers) >= 5)
    finally:
        service.stop()
        registry.close()
    assert len(set(registry.peers)) == 1, f"{len(set(registry.peers))} connections"
    assert set(registry.auth) == {"Bearer device-secret"}


def test_a_shadow_candidate_is_compared_then_dropped_when_promoted(
    tmp_path: Path, device_id: str, registry: Registry
) -> None:
    updater = FakeUpdater(
        tmp_path / "models", bad=set(), current="1.0.0", opposite=frozenset({"2.0.0"})
    )
    shadow = {"model": "tiny", "version": "2.0.0"}
    registry.desired = {"model": "tiny", "version": "1.0.0", "shadow": shadow}
    service = make_service(tmp_path, device_id, registry, updater, poll_s=0.2)
    watcher = Watcher(device_id)
    service.start()
    try:
        assert wait_for(lambda: watcher.of("events", event="shadow_started", version="2.0.0"))
        assert wait_for(lambda: watcher.of("status", version="1.0.0", shadow=shadow))

        def compared() -> list[dict[str, Any]]:
            return [
                m.body["shadow"]
                for m in watcher.of("inference", version="1.0.0")
                if m.body.get("shadow") and m.body["shadow"]["frames"]
            ]

        assert wait_for(lambda: sum(b["labelled"] for b in compared()) >= 20)
        blocks = compared()
        # 2.0.0 answers the other class on every frame: no agreement, and on
        # labelled frames exactly one of the two is right.
        assert all(b["agree"] == 0 and b["agreement"] == 0.0 for b in blocks)
        for b in blocks:
            assert b["correct"] + b["current_correct"] == b["labelled"]
            assert b["only_shadow_correct"] == b["correct"]
            assert b["run_ms"]["total"] > 0 and b["current_run_ms"]["total"] > 0
        # It decided nothing: 1.0.0 still runs and is what the windows report.
        assert service.installed == ("tiny", "1.0.0")
        assert updater.calls == [] and updater.shadow_calls == [("tiny", "2.0.0")]

        # A rollout makes the candidate current: it no longer runs in shadow.
        registry.desired = {"model": "tiny", "version": "2.0.0", "shadow": shadow}
        assert wait_for(lambda: watcher.of("events", event="installed", version="2.0.0"))
        assert wait_for(lambda: watcher.of("events", event="shadow_stopped", version="2.0.0"))
        assert wait_for(lambda: watcher.of("status", version="2.0.0", shadow=None))
        assert service.pipeline is not None and service.pipeline.shadow is None
    finally:
        service.stop()
        watcher.close()
    assert not list((tmp_path / "agent" / "shadow" / "models").iterdir())


def test_without_a_model_no_inference_is_reported(
    tmp_path: Path, device_id: str, registry: Registry
) -> None:
    service = make_service(tmp_path, device_id, registry, FakeUpdater(tmp_path / "m", set()))
    watcher = Watcher(device_id)
    service.start()
    try:
        assert wait_for(lambda: len(watcher.of("telemetry")) >= 2)
        assert (
            service.cameras[0].drops > 0
            or service.cameras[1].drops > 0
            or wait_for(lambda: service.cameras[0].drops > 0)
        )
    finally:
        service.stop()
    assert wait_for(lambda: watcher.of("status", state="offline"))
    watcher.close()
    assert watcher.of("inference") == [] and watcher.of("accuracy") == []
    telemetry = watcher.of("telemetry")[-1].body
    assert [c["id"] for c in telemetry["cameras"]] == ["cam0", "cam1"]


def test_a_missing_camera_stops_the_start(
    tmp_path: Path, device_id: str, registry: Registry
) -> None:
    service = make_service(tmp_path, device_id, registry, FakeUpdater(tmp_path / "m", set()))
    service.camera_uris.append(f"folder:{tmp_path}/nowhere")
    with pytest.raises(CameraError, match="nowhere"):
        service.start()
