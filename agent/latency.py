"""Latencies of one statistics window, in memory that does not grow with the frame rate.

The pipeline records one latency per inferred frame and the shadow one run
time per batch, and each window reports their percentiles. Kept in a list, a
window's latencies took memory in proportion to its frames: at the 28x28
demo model's 5,900 frames per second a 5 s window held 29,000 Python floats
(about 0.9 MiB) that were freed when the window closed and allocated again
in the next, and the C heap kept the largest such window the agent had ever
seen. :class:`LatencySample` keeps a window's latencies in one array of a
fixed size, allocated once:

- count, sum (so the mean) and maximum are exact;
- up to ``capacity`` values, the stored values are every value, so the
  percentiles are exact (``capacity`` is sized for real camera rates: 8192 is
  four 30 fps cameras for a 60 s window);
- beyond, the sample thins itself: it keeps every other stored value and from
  then on stores one value in twice as many as before (systematic sampling).
  The stored values stay spread evenly over the whole window, between half
  and all of ``capacity`` of them, and the percentiles are those of that
  sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_CAPACITY", "LatencySample"]

#: Values a sample stores before it starts thinning (64 KiB of float64).
DEFAULT_CAPACITY = 8192


class LatencySample:
    """The latencies of one window: exact count, mean and max; percentiles of a bounded sample.

    Args:
        capacity: the most values stored; an even number, 2 or more.

    Raises:
        ValueError: ``capacity`` is odd or under 2.
    """

    __slots__ = ("_every", "_skip", "_stored", "_values", "count", "maximum", "total")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"capacity should be an even number, 2 or more, got {capacity}")
        self._values = np.empty(capacity, dtype=np.float64)
        self._stored = 0
        self._every = 1  # store one value in this many
        self._skip = 0  # values still to pass over before the next one stored
        self.count = 0
        self.total = 0.0
        self.maximum = float("-inf")

    @property
    def capacity(self) -> int:
        """The most values stored."""
        return len(self._values)

    @property
    def stored(self) -> np.ndarray:
        """The stored values, in the order added (a view: do not keep it past the window)."""
        return self._values[: self._stored]

    def add(self, value: float) -> None:
        """Count one latency; store it if the sample takes it (see the module docstring)."""
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        if self._skip:
            self._skip -= 1
            return
        if self._stored == len(self._values):
            # Full: keep every other value and store half as often from now on.
            half = len(self._values) // 2
            self._values[:half] = self._values[::2]
            self._stored = half
            self._every *= 2
        self._values[self._stored] = value
        self._stored += 1
        self._skip = self._every - 1

    def mean(self) -> float | None:
        """The exact mean, or None before any value."""
        return self.total / self.count if self.count else None

    def percentiles(self, q: Sequence[float]) -> list[float] | None:
        """Percentiles (0-100) of the stored values, or None before any value."""
        if not self._stored:
            return None
        return [float(v) for v in np.percentile(self.stored, q)]
