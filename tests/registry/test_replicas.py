"""Two registry replicas on one PostgreSQL database share ingest (MQTT 5 shared subscription).

Against the real Mosquitto on 127.0.0.1:1883 and the real PostgreSQL: 50
simulated devices publish, the broker hands each message to one replica, and
every ``(device, seq)`` ends up stored exactly once, folded into its device's
summary once, with both replicas having done part of the work.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import func, select

from corral.payloads import encode
from registry import RegistryContext, Settings, create_app
from registry.tables import Message
from tests.registry.conftest import BROKER, broker_up, postgres_database, unique_id, wait_for

pytestmark = pytest.mark.postgres

DEVICES = 50
SEQS = 20  # seq 0 is a status, 1..19 inference windows of FRAMES frames
FRAMES = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mqtt5_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )


def _require_mqtt5_broker() -> None:
    """Skip, loudly, unless the broker on 127.0.0.1:1883 accepts an MQTT 5 connection."""
    if not broker_up():
        pytest.skip("NO MQTT BROKER on 127.0.0.1:1883: replica test SKIPPED; start mosquitto")
    probe = _mqtt5_client(f"probe-{uuid.uuid4().hex[:8]}")
    accepted = threading.Event()
    probe.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else accepted.set()
    try:
        probe.connect(*BROKER)
        probe.loop_start()
        ok = accepted.wait(5)
    except OSError:
        ok = False
    finally:
        probe.loop_stop()
        probe.disconnect()
    if not ok:
        pytest.skip(
            "the broker on 127.0.0.1:1883 does not speak MQTT 5 (Mosquitto 2 does): "
            "replica test SKIPPED"
        )


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


def _forget_session(client_id: str) -> None:
    """Drop a replica's persistent session, so the broker stops queueing for it."""
    client = _mqtt5_client(client_id)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(*BROKER, clean_start=True, properties=properties)
    client.loop_start()
    try:
        wait_for(client.is_connected, what=f"{client_id} reconnecting to clean up")
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_device(device: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device}")
    client.connect(*BROKER)
    client.loop_start()
    try:
        status = {"state": "online", "model": "animals", "version": "1.0.0", "profile": "x86-cpu"}
        sent = [
            client.publish(
                f"corral/v1/devices/{device}/status", encode("status", device, 0, status), qos=1
            )
        ]
        body = {
            "window_s": 1.0,
            "frames": FRAMES,
            "fps": 10.0,
            "latency_ms": {"p50": 1.0, "p95": 2.0},
            "drops": 0,
            "class_counts": {},
            "model": "animals",
            "version": "1.0.0",
        }
        for seq in range(1, SEQS):
            payload = encode("inference", device, seq, body)
            sent.append(client.publish(f"corral/v1/devices/{device}/inference", payload, qos=1))
        for info in sent:
            info.wait_for_publish(timeout=20)
    finally:
        client.disconnect()
        client.loop_stop()


def test_two_replicas_share_ingest_and_store_each_message_once(tmp_path: Path) -> None:
    _require_mqtt5_broker()
    group = f"corral-test-{uuid.uuid4().hex[:8]}"
    client_ids = [f"corral-registry-{group}-{n}" for n in ("a", "b")]
    ports = [_free_port(), _free_port()]
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
                )
            )
            contexts.append(app.state.registry)
            stack.enter_context(_serve(app, port))
            stack.callback(_forget_session, client_id)
        for context in contexts:
            wait_for(context.bridge.connected.is_set, what="replica subscribed on the broker")

        first = contexts[0]
        headers = {"Authorization": f"Bearer {first.admin_token}"}
        devices = [unique_id("replica") for _ in range(DEVICES)]
        with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", headers=headers) as admin:
            for device in devices:
                token = admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 600}).json()["token"]
                answer = admin.post("/api/v1/enrol", json={"token": token, "device_id": device})
                assert answer.status_code == 201, answer.text

            publishers = [threading.Thread(target=_publish_device, args=(d,)) for d in devices]
            for thread in publishers:
                thread.start()
            for thread in publishers:
                thread.join(timeout=60)

            def stored() -> list[tuple[str, int]] | None:
                with first.sessions() as session:
                    rows = session.execute(select(Message.device_id, Message.seq)).all()
                pairs = [(d, s) for d, s in rows]
                return pairs if len(pairs) >= DEVICES * SEQS else None

            pairs = wait_for(stored, timeout=30, what=f"{DEVICES * SEQS} messages stored")
            # Let a late redelivery land before counting, so "once" is not luck of timing.
            time.sleep(0.5)
            with first.sessions() as session:
                total = session.scalar(select(func.count()).select_from(Message))
                pairs = [(d, s) for d, s in session.execute(select(Message.device_id, Message.seq))]
            fleet = admin.get("/api/v1/devices").json()

    expected = {(d, s) for d in devices for s in range(SEQS)}
    assert total == len(pairs) == len(expected)
    assert set(pairs) == expected
    # each inference window folded into its device's summary exactly once
    assert {d["device_id"]: d["frames"] for d in fleet} == {d: (SEQS - 1) * FRAMES for d in devices}
    counts = [c.ingest.counts.get("stored", 0) for c in contexts]
    assert sum(counts) == len(expected)
    assert all(n > 0 for n in counts), f"one replica did all the work: {counts}"
