"""The waits of agent.backoff: Retry-After parsing, busy answers, jitter, install backoff."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import (
    JITTER,
    MAX_RETRY_AFTER_S,
    InstallBackoff,
    busy_wait_s,
    jitter,
    parse_retry_after,
)
from agent.errors import DownloadError, RegistryBusyError

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
KEY = ("tiny", "1.0.0")


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        ("120", None, 120.0),
        ("0", None, 0.0),
        (" 7 ", None, 7.0),
        ("86400", None, MAX_RETRY_AFTER_S),
        (http_date(NOW + timedelta(seconds=30)), None, 30.0),
        ("Saturday, 01-Mar-25 12:00:45 GMT", None, 45.0),  # RFC 850, obsolete but allowed
        ("Sat Mar  1 12:01:00 2025", None, 60.0),  # asctime, no zone: GMT
        (http_date(NOW - timedelta(hours=1)), None, 0.0),  # in the past: now
        # Measured against the response's Date, not a device clock a year behind.
        (
            http_date(NOW + timedelta(days=365, seconds=20)),
            http_date(NOW + timedelta(days=365)),
            20.0,
        ),
        # A Date header that does not parse: the device clock, as if there were none.
        (http_date(NOW + timedelta(seconds=5)), "yesterday", 5.0),
        (None, None, None),
        ("", None, None),
        ("soon", None, None),
        ("3600 s", None, None),
        ("1.5", None, None),
        ("-5", None, None),
        ("1e3", None, None),
        ("Mon, 99 Foo 2025 99:99:99 GMT", None, None),
    ],
    ids=[
        "seconds",
        "zero",
        "spaces",
        "capped",
        "imf-date",
        "rfc850-date",
        "asctime-date",
        "past-date",
        "date-header",
        "bad-date-header",
        "absent",
        "empty",
        "word",
        "unit",
        "fraction",
        "negative",
        "exponent",
        "bad-date",
    ],
)
def test_retry_after_parses_both_forms_and_ignores_malformed(
    value: str | None, date: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, date=date, now=NOW) == expected


@given(st.text())
def test_any_retry_after_is_none_or_a_bounded_wait(value: str) -> None:
    wait = parse_retry_after(value, now=NOW)
    assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER_S


@given(st.integers(min_value=0, max_value=10**30))
def test_any_delta_seconds_parses_capped(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == min(float(seconds), MAX_RETRY_AFTER_S)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (503, {"Retry-After": "3"}, 3.0),
        (503, {"retry-after": "3"}, 3.0),
        (429, {"Retry-After": "2"}, 2.0),
        (429, {}, 0.0),  # too many requests is busy, even without a number
        (429, {"Retry-After": "soon"}, 0.0),
        (503, {}, None),  # an outage, not a busy registry
        (503, {"Retry-After": "soon"}, None),
        (500, {"Retry-After": "3"}, None),
        (200, {"Retry-After": "3"}, None),
    ],
    ids=[
        "503",
        "lowercase",
        "429",
        "429-bare",
        "429-malformed",
        "503-bare",
        "503-malformed",
        "500",
        "200",
    ],
)
def test_busy_answers_are_429_or_503_with_retry_after(
    status: int, headers: dict[str, str], expected: float | None
) -> None:
    assert busy_wait_s(status, httpx.Headers(headers)) == expected


def test_jitter_stays_within_its_bounds_and_varies() -> None:
    spread = [jitter(10.0) for _ in range(200)]
    assert all(10.0 * (1 - JITTER) <= s <= 10.0 * (1 + JITTER) for s in spread)
    assert len(set(spread)) > 100, "a fleet must not draw the same number"
    assert all(10.0 <= jitter(10.0, low=0.0) <= 10.0 * (1 + JITTER) for _ in range(200))


def test_a_busy_install_waits_at_least_retry_after_then_the_doubling_wins() -> None:
    backoff = InstallBackoff(base_s=1.0)
    busy = RegistryBusyError("busy", retry_after_s=5.0)

    first = backoff.record(KEY, busy)
    assert first["reason"] == "registry_busy"
    assert first["retry_after_s"] == 5.0
    assert 5.0 <= first["retry_in_s"] <= 5.0 * (1 + JITTER)
    assert not backoff.allowed(KEY, time.monotonic() + 4.9)

    # 1, 2, 4, 8 s of doubling: from the fourth failure the backoff is the longer.
    for _ in range(3):
        last = backoff.record(KEY, busy)
    assert last["failures"] == 4
    assert last["retry_in_s"] == 8.0


def test_an_ordinary_failure_has_no_retry_after() -> None:
    backoff = InstallBackoff(base_s=1.0)
    fields = backoff.record(KEY, DownloadError("refused"))
    assert fields == {
        "model": "tiny",
        "version": "1.0.0",
        "reason": "download",
        "failures": 1,
        "retry_in_s": 1.0,
    }
