"""A window's latency sample: exact while small, bounded and evenly thinned beyond."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.latency import DEFAULT_CAPACITY, LatencySample
from agent.pipeline import Window


def _sample(values: list[float], capacity: int) -> LatencySample:
    sample = LatencySample(capacity)
    for value in values:
        sample.add(value)
    return sample


def test_up_to_its_capacity_the_sample_is_every_value() -> None:
    values = list(np.random.default_rng(0).exponential(5.0, 64))
    sample = _sample(values, capacity=64)
    assert sample.stored.tolist() == values
    assert sample.percentiles((50, 95, 99)) == pytest.approx(np.percentile(values, (50, 95, 99)))
    assert (sample.count, sample.maximum) == (64, max(values))
    assert sample.mean() == pytest.approx(np.mean(values))


def test_an_empty_sample_has_no_statistics() -> None:
    sample = LatencySample(8)
    assert (sample.count, sample.mean(), sample.percentiles((50,))) == (0, None, None)


@pytest.mark.parametrize("capacity", [0, 1, 7], ids=["zero", "one", "odd"])
def test_a_capacity_that_cannot_halve_is_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match="even number"):
        LatencySample(capacity)


@given(
    values=st.lists(st.floats(0.0, 1e4, allow_nan=False), max_size=600),
    capacity=st.sampled_from([2, 4, 16, 64]),
)
def test_beyond_its_capacity_it_keeps_every_kth_value_and_exact_totals(
    values: list[float], capacity: int
) -> None:
    sample = _sample(values, capacity)
    # Systematic sampling: every k-th value from the first, k the smallest power
    # of two that fits the window into the capacity.
    k = 1
    while -(-len(values) // k) > capacity:
        k *= 2
    assert sample.stored.tolist() == values[::k]
    assert len(sample.stored) <= capacity
    assert sample.count == len(values)
    assert sample.total == pytest.approx(sum(values))
    assert sample.maximum == (max(values) if values else float("-inf"))


def test_percentiles_of_a_long_window_stay_close_to_the_truth() -> None:
    values = np.random.default_rng(1).lognormal(0.0, 0.5, 200_000)
    sample = _sample(values.tolist(), capacity=DEFAULT_CAPACITY)
    assert DEFAULT_CAPACITY // 2 <= len(sample.stored) <= DEFAULT_CAPACITY
    got = sample.percentiles((50, 95, 99))
    assert got == pytest.approx(np.percentile(values, (50, 95, 99)), rel=0.05)
    assert sample.maximum == values.max()


def test_a_windows_memory_does_not_grow_with_its_frames() -> None:
    # The soak's agent put 29,000 frames into each 5 s window; kept in a list,
    # their latencies held about 1 MiB until the window closed.
    window = Window(["cat", "dog"], "tiny", "1.0.0")
    first, then = DEFAULT_CAPACITY, 20 * DEFAULT_CAPACITY
    for i in range(first):
        window.latencies.add(0.1 + i % 7)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(first, first + then):
            window.latencies.add(0.1 + i % 7)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096, f"{grown} bytes more after {then} more frames"
    latency = window.bodies(queue_depth=0)[0]["latency_ms"]
    assert (latency["max"], latency["p50"]) == (6.1, 3.1)
    truth = np.mean([0.1 + i % 7 for i in range(first + then)])
    assert latency["mean"] == pytest.approx(truth, abs=1e-3)
