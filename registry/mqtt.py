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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from corral.topics import ALL_AGENT_TOPICS

__all__ = ["IncomingMessage", "MqttBridge"]

logger = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        on_message: Callable[[IncomingMessage], None],
    ) -> None:
        self.host = host
        self.port = port
        self.connected = threading.Event()
        self._stopping = False
        self._on_message = on_message
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            manual_ack=True,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message

    def start(self) -> None:
        """Connect in the background and start the network thread.

        Raises:
            OSError: never for an unreachable broker (that is retried), only for a
                host name that cannot be used at all.
        """
        self._client.connect_async(self.host, self.port, keepalive=30)
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
            logger.error("MQTT broker %s:%d refused us: %s", self.host, self.port, reason_code)
            return
        client.subscribe(ALL_AGENT_TOPICS, qos=1)
        self.connected.set()
        logger.info("connected to MQTT broker %s:%d", self.host, self.port)

    def _handle_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        self.connected.clear()
        if not self._stopping:
            logger.warning("disconnected from MQTT broker (%s); reconnecting", reason_code)

    def _handle_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            client.ack(mid, qos)

        self._on_message(IncomingMessage(msg.topic, bytes(msg.payload), ack))
