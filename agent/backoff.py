"""How long the agent waits before asking the registry again.

Three waits, one module:

- :func:`busy_wait_s`: the registry's own word. When it is busy it answers 503
  with ``Retry-After`` (its admission control, ``registry/api/admission.py``)
  or 429; both the desired-version poll and the model download read that
  answer here, and nowhere else.
- :class:`InstallBackoff`: a failed version waits before it is tried again,
  doubling with each failure; a failure because the registry was busy waits
  the longer of that and what the registry asked for.
- :func:`jitter`: a fleet told the same number, or started by the same power
  cut, would otherwise come back in step.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from agent.errors import RegistryBusyError, UpdateError

__all__ = [
    "JITTER",
    "MAX_RETRY_AFTER_S",
    "InstallBackoff",
    "busy_wait_s",
    "jitter",
    "parse_retry_after",
]

#: The longest ``Retry-After`` honoured: a registry (or a device clock years
#: off, for the HTTP-date form) asking for more gets this.
MAX_RETRY_AFTER_S = 600.0
#: The fraction by which waits are spread (± for the poll interval, + only for
#: a ``Retry-After``, which is a minimum).
JITTER = 0.1

_DELTA_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(
    value: str | None, *, date: str | None = None, now: datetime | None = None
) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110 §10.2.3).

    Both forms parse: delta-seconds (``120``) and an HTTP-date
    (``Wed, 21 Oct 2015 07:28:00 GMT``). An HTTP-date is measured against the
    response's own ``Date`` header when it has a valid one, since a park
    computer's clock may be years off; else against ``now``.

    Args:
        value: the header's value, or None when absent.
        date: the response's ``Date`` header, or None.
        now: the device's time; None: the system clock.

    Returns:
        The wait in seconds, between 0 (a date in the past) and
        :data:`MAX_RETRY_AFTER_S`; None when the header is absent or malformed
        (a malformed one is ignored, never guessed at).

    Raises:
        Nothing: every malformed input gives None.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(int(value)), MAX_RETRY_AFTER_S)
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(date) if date is not None else None
    if reference is None:
        reference = now or datetime.now(UTC)
    seconds = (when - reference).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _http_date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    # HTTP-dates are GMT; the asctime form carries no zone at all.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def busy_wait_s(status_code: int, headers: Mapping[str, str]) -> float | None:
    """The wait a "busy" answer asks for, or None when the answer is not one.

    Busy means 429, or 503 with a valid ``Retry-After``: a 503 without one (a
    blob store or signing outage) is an ordinary failure, with the ordinary
    waits.

    Args:
        status_code: the HTTP status.
        headers: the response headers (case-insensitive, as httpx's are).

    Returns:
        Seconds to wait (0.0 for a 429 that names no valid wait), capped at
        :data:`MAX_RETRY_AFTER_S`; None when the registry did not say busy.

    Raises:
        Nothing.
    """
    if status_code not in (429, 503):
        return None
    wait = parse_retry_after(headers.get("Retry-After"), date=headers.get("Date"))
    if wait is None and status_code == 429:
        return 0.0
    return wait


def jitter(seconds: float, low: float = -JITTER, high: float = JITTER) -> float:
    """``seconds`` times a random factor in ``[1 + low, 1 + high]``.

    Args:
        seconds: the wait to spread.
        low: the most it may shrink, as a fraction (negative or 0).
        high: the most it may grow, as a fraction.

    Returns:
        The spread wait.

    Raises:
        Nothing.
    """
    # Not for secrets: only to keep a fleet's requests apart.
    return seconds * (1.0 + random.uniform(low, high))


@dataclass
class InstallBackoff:
    """Failed versions and when each may be tried again (doubling, capped)."""

    base_s: float = 30.0
    max_s: float = 3600.0

    def __post_init__(self) -> None:
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}

    def failed(self, key: tuple[str, str], now: float, at_least_s: float = 0.0) -> float:
        """Record a failure of ``key``.

        Args:
            key: (model, version).
            now: ``time.monotonic()`` of the failure.
            at_least_s: the shortest wait, whatever the doubling says (a
                registry's ``Retry-After``).

        Returns:
            Seconds until the next try.
        """
        count = self._failures.get(key, (0, 0.0))[0] + 1
        delay = max(min(self.base_s * 2 ** (count - 1), self.max_s), at_least_s)
        self._failures[key] = (count, now + delay)
        return delay

    def record(self, key: tuple[str, str], error: UpdateError) -> dict[str, Any]:
        """Record a failed install of ``key``.

        A :class:`RegistryBusyError` waits at least its ``retry_after_s``, plus
        up to :data:`JITTER` of it, so a fleet turned away together comes back
        spread out.

        Returns:
            The fields of its ``install_failed`` event (model, version, reason,
            failures, retry_in_s, and retry_after_s when the registry was
            busy), the same for the agent and the fleet simulator.
        """
        busy = error.retry_after_s if isinstance(error, RegistryBusyError) else None
        at_least = 0.0 if busy is None else jitter(busy, low=0.0)
        delay = self.failed(key, time.monotonic(), at_least_s=at_least)
        fields: dict[str, Any] = {
            "model": key[0],
            "version": key[1],
            "reason": error.reason,
            "failures": self.failures(key),
            "retry_in_s": delay,
        }
        if busy is not None:
            fields["retry_after_s"] = busy
        return fields

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
