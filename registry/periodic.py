"""A background job run every few seconds, which outlives its own failures.

The registry's engines (rollouts, alerts) each own one: ``start`` runs the
job every ``interval_s`` on a daemon thread, a job that raises is logged and
tried again at the next tick, and ``stop`` ends the thread (the job in hand
finishes first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]

logger = logging.getLogger(__name__)


class Periodic:
    """Calls ``job`` every ``interval_s`` seconds on a daemon thread named ``name``.

    Args:
        name: the thread's name, and what the log says failed.
        interval_s: seconds between the end of one call and the start of the next.
        job: the work; an exception is logged and the next tick retries.
    """

    def __init__(self, name: str, interval_s: float, job: Callable[[], object]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.job = job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; the first call comes after one interval."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, waiting (bounded) for the call in hand."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.job()
            except Exception:  # the loop must outlive one bad call; the next retries
                logger.exception("%s failed; retrying in %.0f s", self.name, self.interval_s)
