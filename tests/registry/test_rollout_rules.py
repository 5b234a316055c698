"""Rollout plans and gates as rules: stage sizes, the accuracy test, drift, each gate's verdict."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registry.rollout import GateRules, RolloutPlan, Stage, Windows, accuracy_test, js_distance
from registry.rollout.experiments import EXPERIMENT_GATES
from registry.rollout.gates import evaluate


def _plan(**extra: object) -> RolloutPlan:
    return RolloutPlan.model_validate({"model": "m", "version": "1.0.0", **extra})


def test_stage_sizes_are_cumulative_and_the_last_takes_everyone() -> None:
    plan = _plan(stages=[{"size": 1}, {"size": "10%"}, {"size": "50%"}, {"size": "50%"}])
    assert plan.cutoffs(200) == [1, 20, 100, 200]
    assert plan.cutoffs(3) == [1, 1, 2, 3]
    assert plan.cutoffs(1) == [1, 1, 1, 1]
    assert [s.name for s in plan.stages] == ["stage 1", "stage 2", "stage 3", "stage 4"]


@pytest.mark.parametrize("size", [0, "0%", "150%", "ten", "10"])
def test_a_stage_size_is_a_count_or_a_share(size: object) -> None:
    with pytest.raises(ValidationError):
        Stage(size=size)  # type: ignore[arg-type]


def test_a_plan_refuses_unknown_fields_and_duplicate_stage_names() -> None:
    with pytest.raises(ValidationError, match="stagez"):
        _plan(stagez=[])
    with pytest.raises(ValidationError, match="differ"):
        _plan(stages=[{"name": "a", "size": 1}, {"name": "a"}])


def test_approval_mode_waits_after_every_stage_unless_a_stage_says_otherwise() -> None:
    plan = _plan(mode="approval", stages=[{"size": 1}, {"size": "100%", "approval": False}])
    assert [plan.needs_approval(i) for i in range(2)] == [True, False]
    assert not _plan().needs_approval(0)


def test_the_accuracy_test_sees_ten_points_on_hundreds_of_labels_but_not_on_forty() -> None:
    _, p_many = accuracy_test(360, 400, 320, 400, margin=0.02)
    _, p_few = accuracy_test(36, 40, 32, 40, margin=0.02)
    assert p_many < 0.01
    assert p_few > 0.05
    _, p_same = accuracy_test(360, 400, 362, 400, margin=0.02)
    assert p_same > 0.5


def test_js_distance_is_zero_for_the_same_mix_and_one_for_disjoint_ones() -> None:
    assert js_distance({"cat": 50, "dog": 50}, {"cat": 0.5, "dog": 0.5}) == pytest.approx(0)
    assert js_distance({"cat": 1}, {"dog": 1}) == pytest.approx(1)
    assert 0.1 < js_distance({"cat": 80, "dog": 20}, {"cat": 0.5, "dog": 0.5}) < 0.3


def _windows(p95: float, fps: float, labelled: int, correct: int, errors: int = 0) -> Windows:
    w = Windows()
    for _ in range(4):
        w.add(
            "inference",
            {
                "frames": 100,
                "fps": fps,
                "errors": errors,
                "latency_ms": {"p95": p95},
                "class_counts": {"cat": 50, "dog": 50},
            },
        )
    w.add("accuracy", {"labelled": labelled, "correct": correct})
    return w


def test_each_gate_judges_its_own_number() -> None:
    rules = GateRules()
    old = _windows(p95=10, fps=15, labelled=500, correct=450)
    good = evaluate(rules, 10, 0, _windows(11, 15, 500, 452), old, {"cat": 0.5, "dog": 0.5})
    assert {r.name: r.status for r in good} == {
        "install": "pass",
        "errors": "pass",
        "latency": "pass",
        "fps": "pass",
        "accuracy": "pass",
        "drift": "pass",
        "gpu": "no data",
    }
    bad = evaluate(rules, 10, 2, _windows(25, 8, 500, 380, errors=40), old, {"cat": 1.0})
    assert {r.name for r in bad if r.failed} == {
        "install",
        "errors",
        "latency",
        "fps",
        "accuracy",
        "drift",
    }


def test_an_experiment_stops_on_a_broken_model_but_not_on_the_difference_it_measures() -> None:
    old = _windows(p95=10, fps=15, labelled=500, correct=450)
    worse_and_slower = _windows(25, 8, 500, 380)
    verdicts = evaluate(EXPERIMENT_GATES, 10, 2, worse_and_slower, old, {"cat": 1.0})
    assert [r.name for r in verdicts if r.failed] == []
    ordinary = evaluate(GateRules(), 10, 2, worse_and_slower, old, {"cat": 1.0})
    assert {r.name for r in ordinary if r.failed} >= {"accuracy", "latency", "fps", "drift"}
    broken = _windows(10, 15, 500, 450, errors=40)
    verdicts = evaluate(EXPERIMENT_GATES, 10, 0, broken, old)
    assert [r.name for r in verdicts if r.failed] == ["errors"]


def test_gpu_heat_and_throttling_fail_the_gpu_gate() -> None:
    hot = Windows()
    hot.add("telemetry", {"gpus": [{"temp_c": 91.0, "throttle_reasons": []}]})
    results = evaluate(GateRules(max_gpu_temp_c=85), 1, 0, hot, Windows())
    assert next(r for r in results if r.name == "gpu").failed
    throttled = Windows()
    throttled.add("telemetry", {"gpus": [{"temp_c": 70.0, "throttle_reasons": ["hw_slowdown"]}]})
    results = evaluate(GateRules(), 1, 0, throttled, Windows())
    assert next(r for r in results if r.name == "gpu").failed


def test_without_a_baseline_accuracy_is_judged_against_the_floor_if_there_is_one() -> None:
    new = _windows(10, 15, 500, 400)
    free = next(r for r in evaluate(GateRules(), 1, 0, new, Windows()) if r.name == "accuracy")
    assert free.status == "no data"
    floor = GateRules(min_accuracy=0.85)
    judged = next(r for r in evaluate(floor, 1, 0, new, Windows()) if r.name == "accuracy")
    assert judged.failed


def test_too_few_old_labels_are_no_baseline_and_the_floor_judges() -> None:
    old, new = _windows(10, 15, 120, 108), _windows(10, 15, 500, 400)
    weak = next(
        r for r in evaluate(GateRules(), 1, 0, new, old, min_baseline=300) if r.name == "accuracy"
    )
    assert weak.status == "no data" and "only 120 labels" in weak.detail
    floor = GateRules(min_accuracy=0.85)
    judged = next(
        r for r in evaluate(floor, 1, 0, new, old, min_baseline=300) if r.name == "accuracy"
    )
    assert judged.failed
