"""The signed TUF metadata as served, kept in memory between database reads.

Every update check asks for ``timestamp.json``, the next root and a signed
time (which needs the newest root); reading those from the database on every
request was a third of the registry's work under 500 agents. A stored version
never changes, so ``(role, version)`` is kept for good (a bounded number of
them); what is *newest* is read again at most every ``ttl_s``, so a registry
replica sees another replica's new timestamp within that long, and this
process's own writes are seen at once (:meth:`MetadataCache.forget_newest`).
An absent version is never remembered: root N+1 may be stored at any time.

Reads on a miss go one at a time (a lock), so a burst of requests when the
newest entry expires costs one query and one database connection, not one per
request (the pool is sized for that; registry.api.admission).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["MetadataCache"]

#: Reads ``(role, version)`` from the database, ``version`` None for the newest.
Reader = Callable[[str, "int | None"], "bytes | None"]


class MetadataCache:
    """Stored metadata by ``(role, version)``, and the newest of each role for ``ttl_s``.

    Args:
        read: the database read.
        ttl_s: how long the newest version of a role is trusted to be the newest.
        versions: how many ``(role, version)`` entries are kept (least recently used go).
    """

    def __init__(self, read: Reader, ttl_s: float = 1.0, versions: int = 64) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._max = versions
        self._versions: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._newest: dict[str, tuple[float, bytes]] = {}
        self._reading = threading.Lock()

    def get(self, role: str, version: int | None = None) -> bytes | None:
        """The signed bytes of ``role`` at ``version`` (the newest when None), or None."""
        if version is None:
            return self._get_newest(role)
        key = (role, version)
        with self._reading:
            if (data := self._versions.get(key)) is not None:
                self._versions.move_to_end(key)
                return data
            data = self._read(role, version)
            if data is not None:
                self._remember(key, data)
            return data

    def forget_newest(self) -> None:
        """Read the newest of every role again next time (this process just stored one)."""
        with self._reading:
            self._newest.clear()

    def _get_newest(self, role: str) -> bytes | None:
        entry = self._newest.get(role)
        if entry is not None and time.monotonic() - entry[0] < self._ttl_s:
            return entry[1]
        with self._reading:
            entry = self._newest.get(role)  # another thread may have read it meanwhile
            if entry is not None and time.monotonic() - entry[0] < self._ttl_s:
                return entry[1]
            read_at = time.monotonic()
            data = self._read(role, None)
            if data is not None:
                self._newest[role] = (read_at, data)
            return data

    def _remember(self, key: tuple[str, int], data: bytes) -> None:
        self._versions[key] = data
        while len(self._versions) > self._max:
            self._versions.popitem(last=False)
