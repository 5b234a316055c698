"""The registry's one MQTT connection: agent topics in, desired hints out.

``MqttBridge`` wraps paho-mqtt 2 (callback API version 2) so that paho's
return codes stop here. It connects in the background and paho's network
thread reconnects with backoff (1 s doubling to 30 s), so a broker that is
down at start-up or restarts later delays ingest but never stops the
registry. The session is persistent (``clean_session=False``, a client id
stable per data directory): QoS 1 messages published while the registry was
away are delivered when it comes back.

Acknowledgements are manual: a message is acknowledged only after the
ingest worker has committed it, so a crash between receipt and commit means
a redelivery, which ``(device_id, seq)`` turns into a harmless duplicate.

Protocol: MQTT 5 by default, whose persistent session (``clean_start=False``
and a session expiry, ``session_expiry_s``) ends on its own when a registry
goes away for good: an MQTT 3.1.1 persistent session never does, and every
registry data directory ever used (each test's, each demo's) left the broker
queueing every agent message for it forever (seen: 470 dead sessions slowing
a shared Mosquitto). ``protocol="3.1.1"`` is for brokers without MQTT 5 (the
embedded amqtt one).

Replicas: with ``shared_group`` set (MQTT 5 only) the bridge subscribes to
``$share/<group>/corral/v1/devices/+/+``, so the broker hands each agent
message to one of the replicas in the group (they share one database, whose
``(device_id, seq)`` uniqueness absorbs a redelivery to another replica).
A shared subscription gets no retained messages (MQTT 5, 4.8.2);
agents publish status with QoS 1 as well, so the registry misses none of them
unless it was never subscribed.

TLS: with ``tls`` (:class:`corral.tls.BrokerTls`, from ``CORRAL_MQTT_TLS`` and
the ``CORRAL_MQTT_*_FILE`` settings) the bridge speaks TLS >= 1.2, verifies the
broker's certificate and name, and shows a client certificate if configured.
A connect that fails is retried like any other and explained once in the log
and in :attr:`MqttBridge.last_error` (:class:`corral.tls.ConnectWatch`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from corral.tls import BrokerTls, ConnectWatch
from corral.topics import ALL_AGENT_TOPICS

__all__ = ["SESSION_EXPIRY_S", "IncomingMessage", "MqttBridge", "shared_topic"]

logger = logging.getLogger(__name__)

#: How long the broker keeps an MQTT 5 session (and queues QoS 1 messages) while
#: its replica is away: a day covers a restart or an upgrade.
SESSION_EXPIRY_S = 24 * 3600


def shared_topic(group: str, topic_filter: str = ALL_AGENT_TOPICS) -> str:
    """The shared-subscription form of ``topic_filter`` for ``group``.

    Args:
        group: the share name; the replicas that use the same one split the messages.
        topic_filter: the filter to share.

    Returns:
        ``$share/<group>/<topic_filter>``.

    Raises:
        ValueError: ``group`` is empty or holds ``/``, ``+`` or ``#``.
    """
    if not group or any(c in group for c in "/+#"):
        raise ValueError(
            f"shared subscription group must be non-empty without / + #, got {group!r}"
        )
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class IncomingMessage:
    """A message from the broker and the way to acknowledge it once stored."""

    topic: str
    payload: bytes
    ack: Callable[[], None]


class MqttBridge:
    """Subscribes to every agent topic and publishes the registry's messages.

    Args:
        host: broker host.
        port: broker port.
        client_id: persistent-session client id; one per registry instance.
        on_message: called from paho's network thread for each message; it must
            be quick (hand the message to a queue) and call ``ack`` later.
        shared_group: share agent messages with the other replicas in this group
            (MQTT 5); None for MQTT 3.1.1 and a plain subscription.
        username: the registry's broker account (``registry.broker``); None for none.
        password: its password.
        tls: speak TLS to the broker with these settings; None for plain MQTT.

    Raises:
        ValueError: ``shared_group`` is not a valid share name.
        TlsConfigError: the CA file, client certificate or key in ``tls`` is unusable.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        on_message: Callable[[IncomingMessage], None],
        *,
        shared_group: str | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: str = "5",
        session_expiry_s: int = SESSION_EXPIRY_S,
        tls: BrokerTls | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.connected = threading.Event()
        self._stopping = False
        self._up = False  # CONNACK accepted, on paho's thread (``connected`` waits for the SUBACK)
        self._on_message = on_message
        self._subscription = ALL_AGENT_TOPICS
        self._connect_properties: Properties | None = None
        if protocol == "3.1.1":
            if shared_group is not None:
                raise ValueError("shared subscriptions need MQTT 5; drop the shared group or use 5")
            self._client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=False,
                manual_ack=True,
            )
        else:
            if shared_group is not None:
                self._subscription = shared_topic(shared_group)
            # MQTT 5 has no clean_session: clean_start=False (at connect) and a
            # session expiry make the session persistent, for a while.
            self._client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
                manual_ack=True,
            )
            self._connect_properties = Properties(PacketTypes.CONNECT)
            self._connect_properties.SessionExpiryInterval = session_expiry_s
        if username is not None:
            self._client.username_pw_set(username, password)
        self.tls = tls
        if tls is not None:
            self._client.tls_set_context(tls.context())
        self._watch = ConnectWatch(logger, host, port, tls)
        self._watch.attach(self._client)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe

    @property
    def last_error(self) -> str | None:
        """Why the last connect attempt failed (what to do included); None once connected."""
        return self._watch.last_error

    def start(self) -> None:
        """Connect in the background and start the network thread.

        Raises:
            OSError: never for an unreachable broker (that is retried), only for a
                host name that cannot be used at all.
        """
        if self._connect_properties is None:
            self._client.connect_async(self.host, self.port, keepalive=30)
        else:
            self._client.connect_async(
                self.host,
                self.port,
                keepalive=30,
                clean_start=False,
                properties=self._connect_properties,
            )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish with QoS 1.

        Args:
            topic: the topic.
            payload: the bytes to send.
            retain: whether the broker keeps it for later subscribers.

        Returns:
            True when handed to the broker connection; False when not connected
            (paho keeps QoS 1 messages and sends them after reconnecting).
        """
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            logger.warning("publish to %s queued, broker not connected (rc=%s)", topic, info.rc)
            return False
        return True

    # --- paho callbacks (network thread) --------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._watch.refused(reason_code)
            return
        self._watch.connected()
        self._up = True
        client.subscribe(self._subscription, qos=1)
        logger.info(
            "connected to MQTT broker %s:%d%s",
            self.host,
            self.port,
            " over TLS" if self.tls else "",
        )

    def _handle_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Any,
    ) -> None:
        # Connected means subscribed: a message published before the broker has
        # the subscription would reach no one (a shared subscription gets no
        # retained copy later either).
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            logger.error(
                "MQTT broker %s:%d refused the subscription to %s: %s",
                self.host,
                self.port,
                self._subscription,
                refused[0],
            )
            return
        self.connected.set()

    def _handle_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        was, self._up = self._up, False
        self.connected.clear()
        if self._stopping:
            return
        if was:
            self._watch.disconnected()
            logger.warning("disconnected from MQTT broker (%s); reconnecting", reason_code)
        else:
            self._watch.dropped(reason_code)

    def _handle_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            client.ack(mid, qos)

        self._on_message(IncomingMessage(msg.topic, bytes(msg.payload), ack))
