"""paho-mqtt's ``select.select``, on ``poll()``: for a process with over 1,024 open files.

paho's network loop waits with ``select.select``, which refuses any file
descriptor at or above ``FD_SETSIZE`` (1,024): the call raises
``ValueError``, paho reads that as a lost connection and retries forever
with the same high descriptor. A real agent holds a few dozen files, but
the fleet simulator runs hundreds of agents in one process (a socket, a
wake-up socket pair and an SQLite outbox each), and from about the 140th
agent on, links never came up. :func:`lift_select_limit` gives paho's module
a ``select`` with the same contract built on ``poll()``, which has no such
limit; it changes nothing else and only paho's module sees it.
"""

from __future__ import annotations

import select as _select
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["lift_select_limit", "poll_select"]

_READ = _select.POLLIN | _select.POLLPRI | _select.POLLHUP | _select.POLLERR
_WRITE = _select.POLLOUT | _select.POLLHUP | _select.POLLERR


def poll_select(
    rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """``select.select`` for readability and writability, without the descriptor limit.

    Raises:
        TypeError: an entry has no ``fileno`` (as ``select.select``).
        ValueError: a descriptor is negative (a closed socket), as ``select.select``.
    """
    poller = _select.poll()
    masks: dict[int, int] = {}
    for entries, mask in ((rlist, _select.POLLIN | _select.POLLPRI), (wlist, _select.POLLOUT)):
        for entry in entries:
            fd = entry if isinstance(entry, int) else entry.fileno()
            if fd < 0:
                raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
            masks[fd] = masks.get(fd, 0) | mask
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    ready = dict(poller.poll(ms))

    def fd_of(entry: Any) -> int:
        return entry if isinstance(entry, int) else int(entry.fileno())

    readable = [e for e in rlist if ready.get(fd_of(e), 0) & _READ]
    writable = [e for e in wlist if ready.get(fd_of(e), 0) & _WRITE]
    return readable, writable, []


def lift_select_limit() -> None:
    """Make paho-mqtt's network loop wait with :func:`poll_select` in this process."""
    import paho.mqtt.client as paho

    if getattr(paho.select, "select", None) is poll_select:
        return
    shim = types.SimpleNamespace(**{k: getattr(_select, k) for k in dir(_select) if k[0] != "_"})
    shim.select = poll_select
    paho.select = shim  # type: ignore[assignment]
