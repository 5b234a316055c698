"""The agent's MQTT link against the real Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt import AgentLink
from agent.outbox import Outbox
from corral.payloads import Message, decode, encode
from corral.topics import parse_topic, topic
from tests.agent.fixtures import broker_up, wait_for

HOST, PORT = "127.0.0.1", 1883
WAIT_S = 30.0
TELEMETRY = {"cpu_percent": 1.0, "memory_percent": 2.0, "disk_percent": 3.0, "gpus": []}
STATUS = {"model": "tiny", "version": "1.0.0", "profile": "x86-cpu"}


pytestmark = pytest.mark.skipif(
    not broker_up(HOST, PORT),
    reason=f"MQTT TESTS SKIPPED: no broker at {HOST}:{PORT}; start mosquitto to run them",
)


class Watcher:
    """A test client that records every Corral message of one device, decoded."""

    def __init__(self, device_id: str) -> None:
        self.messages: list[Message] = []
        self.retained: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(HOST, PORT)
        self.client.subscribe(f"corral/v1/devices/{device_id}/+", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        _, kind = parse_topic(message.topic)
        decoded = decode(kind, message.payload)
        with self._lock:
            (self.retained if message.retain else self.messages).append(decoded)

    def of(self, kind: str, retained: bool = False) -> list[Message]:
        with self._lock:
            return [m for m in (self.retained if retained else self.messages) if m.kind == kind]

    def seqs(self) -> list[int]:
        with self._lock:
            return [m.seq for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_raw(name: str, payload: bytes, retain: bool) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(HOST, PORT)
    client.loop_start()
    client.publish(name, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def device_id() -> Iterator[str]:
    device = f"test-{uuid.uuid4().hex[:12]}"
    yield device
    # Leave no retained messages behind on the shared broker.
    for kind in ("status", "desired"):
        publish_raw(topic(device, kind), b"", retain=True)


def test_queued_messages_go_out_in_seq_order_without_gaps(tmp_path: Path, device_id: str) -> None:
    outbox = Outbox(tmp_path, device_id)
    for _ in range(30):
        outbox.put("telemetry", TELEMETRY)
    watcher = Watcher(device_id)
    link = AgentLink(device_id, HOST, PORT, outbox, status_body=lambda: dict(STATUS))
    try:
        link.start()
        assert wait_for(lambda: len(watcher.of("telemetry")) == 30 and watcher.of("status"))
        link.publish("telemetry", TELEMETRY)
        assert wait_for(lambda: len(watcher.of("telemetry")) == 31)
        assert link.stop()
        assert wait_for(lambda: len(watcher.of("status")) == 2)
    finally:
        watcher.close()
        outbox.close()
    telemetry = [m.seq for m in watcher.of("telemetry")]
    assert telemetry == sorted(telemetry)
    # 0-29 queued, 30 reserved for the will (sent as the clean offline), 31 online, 32 live.
    assert sorted(watcher.seqs()) == list(range(33))
    online, offline = watcher.of("status")
    assert (online.seq, online.body["state"]) == (31, "online")
    assert (offline.seq, offline.body["state"]) == (30, "offline")
    assert online.body["version"] == "1.0.0"


def test_status_is_retained_online_then_offline_after_a_clean_stop(
    tmp_path: Path, device_id: str
) -> None:
    outbox = Outbox(tmp_path, device_id)
    link = AgentLink(device_id, HOST, PORT, outbox, status_body=lambda: dict(STATUS))
    link.start()
    try:
        assert link.wait_connected(WAIT_S)
        assert wait_for(lambda: outbox.count_pending() == 0)
        late = Watcher(device_id)
        assert wait_for(lambda: bool(late.of("status", retained=True)))
        assert late.of("status", retained=True)[-1].body["state"] == "online"
        late.close()
    finally:
        assert link.stop()
        outbox.close()
    after = Watcher(device_id)
    try:
        assert wait_for(lambda: bool(after.of("status", retained=True)))
        status = after.of("status", retained=True)[-1]
        assert status.body["state"] == "offline"
        assert status.body["model"] == "tiny"
    finally:
        after.close()


def test_desired_callback_gets_the_retained_hint_and_ignores_bad_ones(
    tmp_path: Path, device_id: str
) -> None:
    desired_topic = topic(device_id, "desired")
    publish_raw(desired_topic, b"not json", retain=True)
    got: list[dict[str, Any]] = []
    outbox = Outbox(tmp_path, device_id)
    link = AgentLink(device_id, HOST, PORT, outbox, on_desired=got.append)
    link.start()
    try:
        assert wait_for(lambda: link.stats.bad_desired == 1)
        assert got == []
        hint = encode("desired", device_id, 5, {"model": "tiny", "version": "1.2.0"})
        publish_raw(desired_topic, hint, retain=True)
        assert wait_for(lambda: len(got) == 1)
        assert got[0] == {"model": "tiny", "version": "1.2.0", "seq": 5}
    finally:
        link.stop()
        outbox.close()
    # A new link (a restarted agent) gets the retained hint at once.
    got.clear()
    outbox = Outbox(tmp_path, device_id)
    link = AgentLink(device_id, HOST, PORT, outbox, on_desired=got.append)
    link.start()
    try:
        assert wait_for(lambda: len(got) == 1)
        assert got[0]["version"] == "1.2.0"
    finally:
        link.stop()
        outbox.close()


def test_messages_wait_in_the_outbox_while_the_broker_is_unreachable(
    tmp_path: Path, device_id: str
) -> None:
    outbox = Outbox(tmp_path, device_id)
    # Nothing listens on port 1 of localhost: the link keeps retrying, nothing is lost.
    link = AgentLink(device_id, HOST, 1, outbox)
    link.start()
    try:
        link.publish("telemetry", TELEMETRY)
        assert not link.wait_connected(1.0)
        assert outbox.count_pending() == 1
    finally:
        assert not link.stop(timeout=0.5)
    # The offline status joined the queue; a later start against the broker sends all.
    assert [r.kind for r in outbox.pending()] == ["status", "telemetry"]
    watcher = Watcher(device_id)
    link = AgentLink(device_id, HOST, PORT, outbox)
    link.start()
    try:
        assert wait_for(lambda: outbox.count_pending() == 0 and len(watcher.messages) >= 3)
    finally:
        link.stop()
        watcher.close()
        outbox.close()
    assert [m.seq for m in watcher.messages][:2] == [0, 1]
