"""Admission: how many requests may use the database at once.

Why it exists. FastAPI runs a sync route in three hops through one thread
pool (the dependencies, the route, the response's validation), and a request's
session keeps its database connection between hops. With more requests in
flight than connections, requests that hold a connection wait for a thread
while every thread waits for a connection: 500 agents checking for updates at
once wedged the registry that way (docs/security.md). So a request must be
admitted before its session exists, and the pool holds a connection for every
admitted request plus the registry's own workers
(``registry.core.db.WORKER_CONNECTIONS``):
an admitted request never waits for a connection, and nothing waits forever.

A request that is not admitted within ``wait_s`` gets 503 with ``Retry-After``
(:class:`BusyError`). Routes that need no database (health), or read it only
through the TUF metadata cache (metadata, the signed time: one connection at a
time, counted in the workers'; registry.metadata_cache), are never queued.

The admission is released, and the session closed, when the route's answer is
built, before its body is sent: a slow download holds neither.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from registry.errors import BusyError

__all__ = ["Admission"]


class Admission:
    """At most ``limit`` requests at once; a request waits up to ``wait_s`` for its turn.

    Args:
        limit: how many requests may hold a database session at once.
        wait_s: how long one may wait before it is told to come back (503).
    """

    def __init__(self, limit: int, wait_s: float) -> None:
        if limit < 1 or wait_s <= 0:
            raise ValueError(f"admission needs limit >= 1 and wait_s > 0, got {limit}, {wait_s}")
        self.limit = limit
        self.wait_s = wait_s
        self._limiter = anyio.CapacityLimiter(limit)

    @property
    def in_use(self) -> int:
        """How many requests are admitted now."""
        return int(self._limiter.borrowed_tokens)

    @property
    def waiting(self) -> int:
        """How many requests wait for their turn now."""
        return int(self._limiter.statistics().tasks_waiting)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the ``limit`` places for the block.

        Raises:
            BusyError: no place came free within ``wait_s``.
        """
        # A token per acquisition, not per task: one task may hold two places.
        token = object()
        with anyio.move_on_after(self.wait_s):
            await self._limiter.acquire_on_behalf_of(token)
        if token not in self._limiter.statistics().borrowers:
            raise BusyError(
                f"the registry is busy ({self.limit} requests at once, "
                f"{self.waiting} more waiting); retry in a few seconds",
                retry_after_s=max(1, math.ceil(self.wait_s / 2)),
            )
        try:
            yield
        finally:
            self._limiter.release_on_behalf_of(token)
