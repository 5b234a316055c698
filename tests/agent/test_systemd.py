"""The systemd notify protocol, against a real Unix datagram socket standing in for systemd."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import Notifier


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def test_ready_watchdog_and_stopping_reach_systemd(
    systemd_socket: tuple[str, socket.socket],
) -> None:
    path, sock = systemd_socket
    notifier = Notifier(path, watchdog_usec="200000")
    assert notifier.notify("READY=1")
    assert sock.recv(64) == b"READY=1"
    notifier.start_watchdog(lambda: True)
    assert sock.recv(64) == b"WATCHDOG=1"
    notifier.stop()
    messages = []
    while (message := sock.recv(64)) != b"STOPPING=1":
        messages.append(message)
    assert set(messages) <= {b"WATCHDOG=1"}


def test_an_unhealthy_agent_starves_the_watchdog(systemd_socket: tuple[str, socket.socket]) -> None:
    path, sock = systemd_socket
    healthy = threading.Event()
    notifier = Notifier(path, watchdog_usec="100000")
    notifier.start_watchdog(healthy.is_set)
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recv(64)
    healthy.set()
    sock.settimeout(10)
    assert sock.recv(64) == b"WATCHDOG=1"
    notifier.stop()


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier("", watchdog_usec=None)
    assert not notifier.enabled
    assert not notifier.notify("READY=1")
    notifier.start_watchdog(lambda: True)
    notifier.stop()
