"""How long a failed install waits before it is tried again."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent.errors import UpdateError

__all__ = ["InstallBackoff"]


@dataclass
class InstallBackoff:
    """Failed versions and when each may be tried again (doubling, capped)."""

    base_s: float = 30.0
    max_s: float = 3600.0

    def __post_init__(self) -> None:
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}

    def failed(self, key: tuple[str, str], now: float) -> float:
        """Record a failure of ``key``.

        Returns:
            Seconds until the next try.
        """
        count = self._failures.get(key, (0, 0.0))[0] + 1
        delay = min(self.base_s * 2 ** (count - 1), self.max_s)
        self._failures[key] = (count, now + delay)
        return delay

    def record(self, key: tuple[str, str], error: UpdateError) -> dict[str, Any]:
        """Record a failed install of ``key``.

        Returns:
            The fields of its ``install_failed`` event (model, version, reason,
            failures, retry_in_s), the same for the agent and the fleet simulator.
        """
        delay = self.failed(key, time.monotonic())
        return {
            "model": key[0],
            "version": key[1],
            "reason": error.reason,
            "failures": self.failures(key),
            "retry_in_s": delay,
        }

    def clear(self, key: tuple[str, str]) -> None:
        """Forget the failures of ``key``, so that it may be tried at once."""
        self._failures.pop(key, None)

    def allowed(self, key: tuple[str, str], now: float) -> bool:
        """Whether ``key`` may be tried at ``now``."""
        entry = self._failures.get(key)
        return entry is None or now >= entry[1]

    def failures(self, key: tuple[str, str]) -> int:
        """How often ``key`` failed."""
        return self._failures.get(key, (0, 0.0))[0]
