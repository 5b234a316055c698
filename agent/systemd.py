"""systemd's notify protocol: READY, WATCHDOG and STOPPING, when run as a ``Type=notify`` unit.

Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op, so the
agent runs the same everywhere. The watchdog is fed only while the caller's
health check passes, so a hung pipeline gets the agent restarted by systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET`` (or ``socket_path``)."""

    def __init__(self, socket_path: str | None = None, watchdog_usec: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is given with a leading '@'.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return bool(self._address)

    def notify(self, message: str) -> bool:
        """Send one message such as ``READY=1``; return whether it was sent."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as e:
            logger.warning("cannot notify systemd (%s): %s", message, e)
            return False
        return True

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Send ``WATCHDOG=1`` at half the watchdog interval while ``healthy()`` holds."""
        if not self._address or not self.watchdog_s:
            return
        interval = self.watchdog_s / 2

        def feed() -> None:
            while not self._stop.wait(interval):
                if healthy():
                    self.notify("WATCHDOG=1")
                else:
                    logger.error("not feeding the systemd watchdog: the agent is unhealthy")

        self._thread = threading.Thread(target=feed, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding the watchdog and tell systemd the agent is stopping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.notify("STOPPING=1")
