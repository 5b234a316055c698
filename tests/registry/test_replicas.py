"""Two registry replicas on one PostgreSQL database share ingest (MQTT 5 shared subscription).

Against the real Mosquitto on 127.0.0.1:1883 and the real PostgreSQL: 200
devices publish for 12 seconds (``CORRAL_TEST_INGEST_S``), one window every
two seconds each, alternating ``inference`` and ``accuracy``; the broker hands
each message to one replica. Every ``(device, seq)`` the broker acknowledged to
its device ends up stored exactly once and folded into its device's summary
once (``tests.registry.replicas.audit_ingest``), with both replicas having
done part of the work. The five-minute version, with simulated agents and
replica processes, is ``scripts/bench ingest.two_replicas``.

The devices are plain paho clients with the real payload encoder, not
simulated agents: 200 agents would need 200 enrolments with TUF roots and a
rollout before they report anything, which would be most of the test's time on a
two-core machine; what is under test here is the replicas' side.
Nothing here is timed: the rate is only there to make the replicas race. It
stays well under what two replicas store on a loaded two-core machine,
because Mosquitto drops what it cannot queue for a client that falls more than
1,000 messages behind (``max_queued_messages``), and a test that can fail for
the machine's load alone would be flaky; the benchmark measures that case.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

from corral.local import free_port
from corral.payloads import encode
from corral.topics import topic
from registry import RegistryContext, Settings, create_app
from tests.registry.conftest import BROKER, postgres_database, unique_id, wait_for
from tests.registry.replicas import audit_ingest, forget_session, mqtt5_problem

pytestmark = pytest.mark.postgres

DEVICES = 200
DURATION_S = float(os.environ.get("CORRAL_TEST_INGEST_S", "12"))
INTERVAL_S = 2.0  # each device: one window every two seconds, 100 messages a second in all
FRAMES = 10


@contextmanager
def _serve(app: FastAPI, port: int) -> Iterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_for(lambda: server.started, what=f"uvicorn on {port}")
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


class _Device:
    """One device's MQTT connection (clean session) and the QoS 1 messages it sent."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}")
        self.sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []

    def start(self) -> None:
        self.client.connect(*BROKER)
        self.client.loop_start()
        status = {"state": "online", "model": "animals", "version": "1.0.0", "profile": "x86-cpu"}
        self.publish("status", status)

    def publish(self, kind: str, body: dict[str, Any]) -> None:
        seq = len(self.sent)
        payload = encode(kind, self.device_id, seq, body)
        self.sent.append((seq, self.client.publish(topic(self.device_id, kind), payload, qos=1)))

    def window(self) -> None:
        """The next window: inference and accuracy in turn, FRAMES frames, 8 correct."""
        common = {"window_s": INTERVAL_S, "model": "animals", "version": "1.0.0"}
        if len(self.sent) % 2:
            body = {
                "frames": FRAMES,
                "fps": FRAMES / INTERVAL_S,
                "latency_ms": {"p50": 1.0, "p95": 2.0},
                "drops": 0,
                "class_counts": {"cat": FRAMES},
            }
            self.publish("inference", {**common, **body})
        else:
            body = {"labelled": FRAMES, "correct": 8, "accuracy": 0.8, "per_class": {}}
            self.publish("accuracy", {**common, **body})

    def stop(self) -> set[int]:
        """Wait (bounded) for the PUBACKs, disconnect; the seqs the broker acknowledged."""
        deadline = time.monotonic() + 30
        for _, info in self.sent:
            if not info.is_published():
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()
        return {seq for seq, info in self.sent if info.is_published()}


def _run_devices(devices: list[_Device], duration_s: float) -> None:
    """Every device a window each INTERVAL_S, spread over the interval, for ``duration_s``.

    Late (a loaded machine) means a slower pace, never a burst to catch up.
    """
    step = INTERVAL_S / len(devices)
    started = next_at = time.monotonic()
    while time.monotonic() - started < duration_s:
        for device in devices:
            next_at = max(next_at + step, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))
            device.window()


def test_two_replicas_share_ingest_and_store_each_message_once(tmp_path: Path) -> None:
    problem = mqtt5_problem(BROKER)
    if problem:
        pytest.skip(f"replica test SKIPPED: {problem}")
    group = f"corral-test-{uuid.uuid4().hex[:8]}"
    client_ids = [f"corral-registry-{group}-{n}" for n in ("a", "b")]
    ports = [free_port(), free_port()]
    with postgres_database() as url, ExitStack() as stack:
        # Replicas share the database and the data directory (TUF keys, blobs, the
        # admin token); each needs its own MQTT client id. Built one after the other
        # so that only the first creates the schema and the keys.
        contexts: list[RegistryContext] = []
        for client_id, port in zip(client_ids, ports, strict=True):
            app = create_app(
                Settings(
                    data_dir=tmp_path / "registry",
                    database_url=url,
                    public_url=f"http://127.0.0.1:{port}",
                    mqtt_client_id=client_id,
                    mqtt_shared_group=group,
                    mqtt_session_expiry_s=60,
                )
            )
            contexts.append(app.state.registry)
            # Registered first, so it runs once the replica has stopped (a live one
            # would be taken over, reconnect, and keep its session).
            stack.callback(forget_session, client_id, BROKER)
            stack.enter_context(_serve(app, port))
        for context in contexts:
            wait_for(context.bridge.connected.is_set, what="replica subscribed on the broker")

        first = contexts[0]
        headers = {"Authorization": f"Bearer {first.admin_token}"}
        devices = [_Device(unique_id("replica")) for _ in range(DEVICES)]
        with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", headers=headers) as admin:

            def enrol(device: _Device) -> None:
                token = admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 600}).json()["token"]
                body = {"token": token, "device_id": device.device_id}
                answer = admin.post("/api/v1/enrol", json=body)
                assert answer.status_code == 201, answer.text

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(enrol, devices))
            for device in devices:
                device.start()
            try:
                _run_devices(devices, DURATION_S)
            finally:
                acked = {d.device_id: d.stop() for d in devices}
        total = sum(len(s) for s in acked.values())
        unacked = sum(len(d.sent) for d in devices) - total
        assert unacked == 0, f"the broker never acknowledged {unacked} message(s)"
        # Until the replicas have stored what was acknowledged (the audit says what not).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(c.ingest.counts.get("stored", 0) for c in contexts) >= total:
                break
            time.sleep(0.1)
        # Let a late redelivery land before counting, so "once" is not luck of timing.
        time.sleep(0.5)
        counts = [c.ingest.counts for c in contexts]
        audit = audit_ingest(first.engine, acked, [c.get("stored", 0) for c in counts])

    assert audit.lost == [], f"{len(audit.lost)} acknowledged, never stored: {audit.lost[:10]}"
    assert audit.rows == audit.distinct == audit.acked == total, audit
    assert audit.replica_stores == total, counts
    some = dict(list(audit.misfolded.items())[:5])
    assert (
        audit.misfolded == {}
    ), f"{len(audit.misfolded)} device summaries (total, sum of stored windows) differ: {some}"
    assert audit.duplicated == 0
    # Drops are not checked: the shared broker carries other tests' devices too, which
    # the group receives and drops as unknown; ours would show above as lost.
    assert all(c.get("stored", 0) > 0 for c in counts), f"one replica did all the work: {counts}"
