"""decide_drift: one evaluation's drift verdicts, as the alert engine and the bench use them."""

from __future__ import annotations

import pytest

from registry.alerts import Drift, decide_drift


def _small(p: float) -> Drift:
    return Drift("chi2_classes", 10.0, p, effective_n=300.0, threshold=0.0, large=False)


def _large(value: float) -> Drift:
    return Drift("js_classes", value, None, effective_n=5000.0, threshold=0.1, large=True)


CALM = [(f"calm-{i}", [_small(0.5)]) for i in range(9)]


def test_a_small_p_value_among_calm_devices_is_flagged_and_fires_on_its_second_evaluation() -> None:
    tested = [("drifting", [_small(1e-6), _small(0.9)]), *CALM]
    first, streaks = decide_drift(tested, {}, fdr=0.01, consecutive=2)
    assert first[0].device_id == "drifting"
    assert first[0].p_value == pytest.approx(2e-6)  # Bonferroni over its two tests
    assert (first[0].rejected, first[0].streak, first[0].fires) == (True, 1, False)
    assert [d.flagged for d in first[1:]] == [False] * len(CALM)
    assert streaks == {"drifting": 1}

    second, streaks = decide_drift(tested, streaks, fdr=0.01, consecutive=2)
    assert (second[0].streak, second[0].fires) == (2, True)
    assert streaks == {"drifting": 2}


def test_benjamini_hochberg_spares_a_p_value_that_only_looks_small_among_many() -> None:
    # 0.004 is under the FDR alone, but not under 0.01 * 1/10 with nine calm devices beside it.
    tested = [("borderline", [_small(0.004)]), *CALM]
    decisions, streaks = decide_drift(tested, {}, fdr=0.01, consecutive=1)
    assert not decisions[0].rejected
    assert streaks == {}
    alone, _ = decide_drift(tested[:1], {}, fdr=0.01, consecutive=1)
    assert alone[0].rejected and alone[0].fires


@pytest.mark.parametrize(
    ("value", "flagged"),
    [pytest.param(0.25, True, id="over-threshold"), pytest.param(0.05, False, id="under")],
)
def test_an_effect_size_flags_by_its_threshold_without_a_p_value(
    value: float, flagged: bool
) -> None:
    decisions, _ = decide_drift([("big", [_large(value)])], {}, fdr=0.01, consecutive=1)
    (decision,) = decisions
    assert decision.p_value == 1.0 and not decision.rejected
    assert decision.flagged is flagged and decision.fires is flagged
    assert decision.large == ((_large(value),) if flagged else ())


def test_a_calm_evaluation_ends_the_streak() -> None:
    decisions, streaks = decide_drift(CALM[:1], {"calm-0": 5, "gone": 3}, fdr=0.01, consecutive=2)
    assert decisions[0].streak == 0 and not decisions[0].fires
    assert streaks == {}, "calm devices and devices not tested lose their streaks"


def test_a_device_tested_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="each device once"):
        decide_drift([("a", [_small(0.5)]), ("a", [_small(0.5)])], {}, fdr=0.01, consecutive=2)


def test_an_agents_histogram_without_edges_is_read_and_the_baseline_moved_onto_its_bins() -> None:
    from datetime import UTC, datetime

    from registry.alerts import DeviceWindow, drift
    from registry.alerts.quality import rebin

    # A two-class baseline over [0.5, 1] in 5 bins of 0.1, onto the agent's 10 over [0, 1].
    base_edges = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    moved = rebin([1, 2, 3, 4, 10], base_edges, [i / 10 for i in range(11)])
    assert moved == [0, 0, 0, 0, 0, 1, 2, 3, 4, 10]
    assert rebin([10], [0.0, 1.0], [0.0, 0.5, 1.0]) == [5.0, 5.0]

    window = DeviceWindow("cam-1", "animals", "1.0.0")
    body = {
        "frames": 400,
        "class_counts": {"cat": 200, "dog": 200},
        "confidence_hist": {"bins": 10, "counts": [0, 0, 0, 0, 0, 400, 0, 0, 0, 0]},
    }
    window.add("inference", body, datetime(2026, 1, 1, tzinfo=UTC))
    assert window.confidence_bins == [i / 10 for i in range(11)]
    baseline = {
        "samples": 1000,
        "class_prior": {"cat": 0.5, "dog": 0.5},
        "confidence_hist": {"bins": base_edges, "counts": [0, 0, 0, 100, 900]},
    }
    tests = {d.test: d for d in drift(window, baseline, 1.0, 1e9, 0.1, 0.2)}
    # Classes as expected; confidence all at 0.5-0.6 against a confident baseline.
    assert tests["chi2_classes"].p_value > 0.5
    assert tests["ks_confidence"].p_value < 1e-6
