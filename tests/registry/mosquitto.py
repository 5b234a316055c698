"""A real Mosquitto of the test's own, on a free port, and MQTT clients that say what happened.

``Mosquitto.start(directory, port)`` runs ``mosquitto -c`` with a listener on
127.0.0.1 and ``corral.conf`` (the authentication settings written by
``registry.broker``) from ``directory``; with ``registry_port``, ``corral.conf``
declares the listeners itself (the devices' on ``port``, the registry's on
``registry_port``, as ``registry.broker.conf_file`` writes them). ``reload``
sends SIGHUP, as an operator does after writing the files again. ``Client``
wraps paho so a test can wait for CONNACK, SUBACK, PUBACK and messages without
sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["Client", "Mosquitto", "free_port"]


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mosquitto:
    """One ``mosquitto`` process."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    #: The registry's listener; ``port`` when there is one listener for all.
    registry_port: int = 0

    @classmethod
    def start(cls, directory: Path, port: int, *, registry_port: int | None = None) -> Mosquitto:
        """Start Mosquitto with ``directory/corral.conf`` on ``127.0.0.1:port``.

        Args:
            directory: holds ``corral.conf``; the full configuration and the log go here.
            port: the listener's port (the devices' listener with ``registry_port``).
            registry_port: the registry's listener; ``corral.conf`` then declares
                both listeners and no other is added.

        Skips, loudly, when there is no ``mosquitto`` binary.
        """
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            pytest.skip("NO MOSQUITTO BINARY: broker ACL tests SKIPPED; apt-get install mosquitto")
        conf = directory / "mosquitto.conf"
        lines = ["persistence false"]
        if registry_port is None:
            lines.insert(0, f"listener {port} 127.0.0.1")
        if os.geteuid() == 0:
            lines.insert(
                0, "user root"
            )  # as root it would drop to `mosquitto`, who cannot read tmp
        conf.write_text("\n".join(lines) + "\n" + (directory / "corral.conf").read_text())
        log = directory / "mosquitto.log"
        with log.open("wb") as out:
            process = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out)
        broker = cls(port, process, log, registry_port or port)
        deadline = time.monotonic() + 10
        waiting = {port, broker.registry_port}
        while waiting:
            if process.poll() is not None:
                raise AssertionError(f"mosquitto exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", min(waiting)), timeout=0.2):
                    waiting.remove(min(waiting))
            except OSError as e:
                if time.monotonic() > deadline:
                    broker.stop()
                    tail = log.read_text()[-2000:]
                    raise AssertionError(f"mosquitto did not listen: {tail}") from e
                time.sleep(0.05)
        return broker

    def reload(self) -> None:
        """Make Mosquitto reread its password and ACL files (SIGHUP)."""
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Stop the process and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Client:
    """A paho client logged in as ``user``; it records CONNACKs, disconnects and messages."""

    port: int
    user: str | None
    password: str | None
    client_id: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    #: Ask for a persistent session (MQTT 3.1.1 ``clean_session`` off), as the agent does.
    persistent: bool = False
    connacks: list[str] = field(default_factory=list)
    #: Per CONNACK: whether the broker had a session for us.
    sessions_present: list[bool] = field(default_factory=list)
    disconnects: int = 0
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _subacks: dict[int, list[str]] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=not self.persistent
        )
        if self.user is not None:
            self.paho.username_pw_set(self.user, self.password)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe

    def connect(self, timeout: float = 10.0) -> str:
        """Connect; return the CONNACK's reason (``Success``, ``Not authorized``...)."""
        self.paho.connect("127.0.0.1", self.port, keepalive=30)
        self.paho.loop_start()
        self._wait(lambda: self.connacks, timeout, "a CONNACK")
        return self.connacks[0]

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.paho.disconnect()
        self.paho.loop_stop()

    def subscribe(self, topic: str) -> list[str]:
        """Subscribe with QoS 1 and return the SUBACK's reasons."""
        _, mid = self.paho.subscribe(topic, qos=1)
        assert mid is not None, f"paho could not send the SUBSCRIBE for {topic}"
        self._wait(lambda: mid in self._subacks, 10.0, f"the SUBACK for {topic}")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK.

        MQTT 3.1.1 acknowledges a publish the ACL denies all the same (and drops it).
        """
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_message(self, topic: str, timeout: float = 10.0) -> bytes:
        """The first message received on ``topic``, waiting for it."""
        self._wait(
            lambda: any(t == topic for t, _ in self.messages), timeout, f"a message on {topic}"
        )
        return next(p for t, p in self.messages if t == topic)

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Wait until the broker has closed the connection at least once."""
        self._wait(lambda: self.disconnects, timeout, "the broker to disconnect us")

    def _wait(self, condition: Any, timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.sessions_present.append(bool(flags.session_present))
        self.connacks.append(str(reason))
        if reason.is_failure:
            self.paho.disconnect()  # no retries: the test asked once
        self._notify()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.disconnects += 1
        self._notify()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append((message.topic, bytes(message.payload)))
        self._notify()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        self._subacks[mid] = [str(r) for r in reasons]
        self._notify()
