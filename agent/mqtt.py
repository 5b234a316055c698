"""The agent's MQTT link: status, last will, the outbox sender and the desired hint.

``AgentLink`` wraps paho-mqtt 2 (``CallbackAPIVersion.VERSION2``); paho's
return codes and callbacks stop here. The order of things:

1. :meth:`AgentLink.start` reserves a seq in the outbox for the last will
   (a retained ``offline`` status), sets the will, and connects in the
   background (``connect_async`` + ``loop_start``): the agent runs and
   enqueues while the broker is away.
2. On every connect: enqueue a retained ``online`` status (seq'd through the
   outbox like everything else) and subscribe to the device's ``desired``
   topic (QoS 1). A retained desired hint arrives right away and goes to the
   ``on_desired`` callback, decoded; a bad payload is logged and dropped.
3. The sender thread drains the outbox in seq order with QoS 1, at most
   ``max_inflight`` unacknowledged at once, and marks a row sent when paho's
   ``on_publish`` reports its PUBACK (matched by message id). While
   disconnected it sends nothing; paho's persistent session
   (``clean_session=False``) re-sends what was in flight when it reconnects.
   Paho's own in-flight limit is switched off: with it on, paho parks
   messages as "queued" and, after a reconnect, stops re-sending at the first
   queued one, leaving the rest unsent for good (the sender stalled under load
   after a broker restart). Our window is the only limit, and a message
   unacknowledged for ``resend_after_s`` while connected is published again
   (the registry stores by ``(device_id, seq)``, so a second copy is harmless):
   whatever paho does, the sender cannot stall.
4. A PUBACK means the broker has the message, not that a subscriber got it:
   a broker that crashes, or restarts and loses its queues (Mosquitto 2.0
   does, under load, even with persistence), drops what it acknowledged but
   had not yet delivered. So after an unexpected disconnect, everything
   acknowledged in the ``replay_s`` before it goes out again, in seq order
   ahead of the backlog; the registry keeps one copy per ``(device_id, seq)``.
5. After an unexpected disconnect a new seq is reserved for the will of the
   next connection (the broker fired the old one).
6. :meth:`AgentLink.stop` enqueues the ``offline`` status with the will's
   seq, waits (bounded) for its PUBACK, and disconnects cleanly, so the
   broker drops the will and the retained status says ``offline``.

``on_publish`` runs in paho's network thread while paho holds its own lock;
it only queues the acknowledged message id for the sender thread, which owns
the in-flight table (calling back into paho from there could deadlock).

TLS: with ``tls`` (:class:`corral.tls.BrokerTls`) the link speaks TLS >= 1.2,
verifies the broker's certificate against the CA file and its name against
``host``, and shows a client certificate when one is configured. A connect
that fails (an untrusted or misnamed broker certificate, a broker that wants a
client certificate, a broker that is down) is retried like any other, and
explained once in the log and in :attr:`AgentLink.last_error`
(:class:`corral.tls.ConnectWatch`): the agent keeps running and queueing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from agent.outbox import Outbox
from corral.errors import PayloadError
from corral.payloads import decode, encode
from corral.tls import BrokerTls, ConnectWatch
from corral.topics import topic

__all__ = ["AgentLink", "LinkStats"]

logger = logging.getLogger(__name__)

DesiredCallback = Callable[[dict[str, Any]], None]
StatusBody = Callable[[], Mapping[str, Any]]


@dataclass
class LinkStats:
    """Counters of one link, for logs and tests."""

    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    bad_desired: int = 0
    resent: int = 0
    replayed: int = 0


class AgentLink:
    """One device's connection to the broker.

    Args:
        device_id: the enrolled device id.
        host: broker host.
        port: broker port.
        outbox: the device's outbox; everything sent comes from it.
        on_desired: called with the decoded ``desired`` body (model, version); runs in
            paho's thread, so it must only hand the work over.
        status_body: returns the status fields besides ``state`` (model, version, profile...).
        username: broker user name (the device id when the broker checks credentials).
        password: broker password (the device token).
        keepalive: MQTT keepalive in seconds; the will fires about 1.5 x this after a loss.
        max_inflight: the most unacknowledged messages at once.
        reconnect_delay_s: the first and the longest wait between reconnect attempts.
        resend_after_s: how long a message may wait for its PUBACK, while connected,
            before it is published again.
        replay_s: after an unexpected disconnect, messages acknowledged this long
            before it are sent again (the broker may have lost them).
        tls: speak TLS to the broker with these settings; None for plain MQTT.

    Raises:
        TlsConfigError: the CA file, client certificate or key in ``tls`` is unusable.
    """

    def __init__(
        self,
        device_id: str,
        host: str,
        port: int,
        outbox: Outbox,
        on_desired: DesiredCallback | None = None,
        status_body: StatusBody | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        max_inflight: int = 16,
        reconnect_delay_s: tuple[int, int] = (1, 30),
        resend_after_s: float = 30.0,
        replay_s: float = 10.0,
        tls: BrokerTls | None = None,
    ) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port
        self.outbox = outbox
        self.on_desired = on_desired
        self.status_body = status_body or (
            lambda: {"model": None, "version": None, "profile": None}
        )
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.resend_after_s = resend_after_s
        self.replay_s = replay_s
        self.stats = LinkStats()
        self._desired_topic = topic(device_id, "desired")
        self._status_topic = topic(device_id, "status")
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"corral-agent-{device_id}",
            clean_session=False,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self.tls = tls
        if tls is not None:
            self._client.tls_set_context(tls.context())
            if not tls.check_hostname:
                logger.warning(
                    "not checking that the broker's certificate names %s (check_hostname off)",
                    host,
                )
        self._watch = ConnectWatch(logger, host, port, tls)
        self._watch.attach(self._client)
        self._client.max_inflight_messages_set(0)  # no paho limit: see the module doc
        self._client.reconnect_delay_set(*reconnect_delay_s)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: collections.deque[int] = collections.deque()
        # Owned by the sender thread: mid -> (seq, when published), and the seqs in it.
        self._inflight: dict[int, tuple[int, float]] = {}
        self._inflight_seqs: set[int] = set()
        self._connected_at = 0.0
        # (when acknowledged, seq), newest last; owned by the sender thread.
        self._recent_acks: collections.deque[tuple[float, int]] = collections.deque()
        self._lost_at: float | None = None  # set by paho's thread, consumed by the sender
        self._will_seq: int | None = None
        self._sender: threading.Thread | None = None
        self._started = False

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the connection and it is up."""
        return self._connected.is_set()

    @property
    def last_error(self) -> str | None:
        """Why the last connect attempt failed (what to do included); None once connected."""
        return self._watch.last_error

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected.

        Returns:
            Whether the link is connected.
        """
        return self._connected.wait(timeout)

    # --- lifecycle --------------------------------------------------------------

    def _set_will(self) -> None:
        self._will_seq = self.outbox.reserve_seq()
        body = {**self.status_body(), "state": "offline"}
        payload = encode("status", self.device_id, self._will_seq, body)
        self._client.will_set(self._status_topic, payload, qos=1, retain=True)

    def start(self) -> None:
        """Connect in the background and start sending the outbox.

        The broker may be down: the link keeps retrying, and messages wait in the outbox.
        """
        self._stopping.clear()
        self._set_will()
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        self._started = True

    def stop(self, timeout: float = 5.0) -> bool:
        """Say ``offline``, wait (bounded) for the broker to acknowledge it, and disconnect.

        Args:
            timeout: how long to wait for the outbox to drain up to the offline status.

        Returns:
            Whether the offline status was acknowledged; if not, it stays in the outbox
            and goes out after the next start (the will covers the meantime).
        """
        if not self._started:
            return False
        seq = self._will_seq if self._will_seq is not None else self.outbox.reserve_seq()
        self.outbox.put("status", {**self.status_body(), "state": "offline"}, seq=seq)
        self._wake.set()
        deadline = time.monotonic() + timeout
        acked = False
        while time.monotonic() < deadline:
            if self.connected and self.outbox.is_sent(seq):
                acked = True
                break
            time.sleep(0.02)
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False
        return acked

    def publish(self, kind: str, body: Mapping[str, Any]) -> int:
        """Enqueue a message; the sender thread delivers it.

        Returns:
            Its seq.

        Raises:
            PayloadError: the body breaks the payload contract.
        """
        seq = self.outbox.put(kind, body)
        self._wake.set()
        return seq

    def publish_status(self) -> int:
        """Enqueue a retained ``online`` status with the current :attr:`status_body`.

        Returns:
            Its seq.
        """
        return self.publish("status", {**self.status_body(), "state": "online"})

    # --- paho callbacks (paho's thread) -------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._watch.refused(reason)
            return
        self._watch.connected()
        self.stats.connects += 1
        logger.info(
            "connected to broker %s:%s%s", self.host, self.port, " over TLS" if self.tls else ""
        )
        client.subscribe(self._desired_topic, qos=1)
        self._connected_at = time.monotonic()
        self._connected.set()
        self.publish_status()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self.stats.disconnects += 1
        if self._stopping.is_set():
            return
        if not was:
            # A failed attempt: the will was never registered, so its seq stays unused.
            self._watch.dropped(reason)
            return
        self._watch.disconnected()
        logger.warning("lost the broker (%s); retrying, messages wait in the outbox", reason)
        self._lost_at = time.monotonic()
        self._wake.set()
        # The broker may or may not have fired the old will (a broker that shuts down
        # does not). Sending it ourselves with the same seq fills its place either
        # way: the registry stores by (device_id, seq), so a second copy is harmless,
        # and it goes out before the "online" of the next connection.
        if self._will_seq is not None:
            self.outbox.put(
                "status", {**self.status_body(), "state": "offline"}, seq=self._will_seq
            )
        # The next connection needs a will of its own.
        self._set_will()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acks.append(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self._desired_topic:
            return
        if not message.payload:
            return  # a cleared retained hint
        try:
            desired = decode("desired", message.payload)
        except PayloadError as e:
            self.stats.bad_desired += 1
            logger.warning("ignoring a bad desired payload on %s: %s", message.topic, e)
            return
        if self.on_desired is not None:
            # The registry's seq tells a re-issued hint from a retained replay.
            self.on_desired({**desired.body, "seq": desired.seq})

    # --- sender (its own thread) ----------------------------------------------------

    def _take_acks(self) -> None:
        while self._acks:
            mid = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            seq = entry[0]
            self._inflight_seqs.discard(seq)
            self.outbox.mark_sent(seq)
            self.stats.acked += 1
            now = time.monotonic()
            self._recent_acks.append((now, seq))
            while self._recent_acks and now - self._recent_acks[0][0] > self.replay_s:
                self._recent_acks.popleft()

    def _replay_recent(self) -> None:
        """After a loss, queue again what the broker acknowledged just before it."""
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is None:
            return
        seqs = [seq for when, seq in self._recent_acks if lost_at - when <= self.replay_s]
        self._recent_acks.clear()
        replayed = self.outbox.mark_unsent(seqs)
        self.stats.replayed += replayed
        if replayed:
            logger.info(
                "sending %d message(s) again that the lost broker had acknowledged", replayed
            )

    def _forget_overdue(self) -> None:
        """Free the window of messages whose PUBACK is overdue, so they go out again.

        The clock starts at the later of publish and connect: after a long outage,
        paho's own re-send gets its chance first.
        """
        now = time.monotonic()
        overdue = [
            mid
            for mid, (_, when) in self._inflight.items()
            if now - max(when, self._connected_at) > self.resend_after_s
        ]
        for mid in overdue:
            seq, _ = self._inflight.pop(mid)
            self._inflight_seqs.discard(seq)
            self.stats.resent += 1
        if overdue:
            logger.warning(
                "%d message(s) unacknowledged for %.0f s; publishing them again",
                len(overdue),
                self.resend_after_s,
            )

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            self._take_acks()
            if self._lost_at is not None:
                self._replay_recent()
            if not self._connected.is_set():
                continue
            self._forget_overdue()
            room = self.max_inflight - len(self._inflight)
            if room <= 0:
                continue
            rows = self.outbox.pending(limit=room + len(self._inflight_seqs))
            for row in rows:
                if row.seq in self._inflight_seqs:
                    continue
                if room <= 0 or not self._connected.is_set():
                    break
                info = self._client.publish(
                    topic(self.device_id, row.kind), row.payload, qos=1, retain=row.kind == "status"
                )
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    logger.warning(
                        "publishing seq %s failed: %s", row.seq, mqtt.error_string(info.rc)
                    )
                    break
                # NO_CONN: paho queued it and sends it on reconnect; it is in flight either way.
                self._inflight[info.mid] = (row.seq, time.monotonic())
                self._inflight_seqs.add(row.seq)
                self.stats.published += 1
                room -= 1
            self._take_acks()
