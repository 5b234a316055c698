"""Classification metrics, checked against figures worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import drift_baseline, evaluate_predictions, softmax


def test_a_worked_example() -> None:
    # true:  cat cat cat cat dog dog
    # pred:  cat cat cat dog dog cat
    evaluation = evaluate_predictions(
        np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 0]), ["cat", "dog"]
    )
    assert evaluation.accuracy == pytest.approx(4 / 6)
    assert evaluation.confusion == [[3, 1], [1, 1]]
    cat, dog = evaluation.per_class["cat"], evaluation.per_class["dog"]
    assert (cat.precision, cat.recall, cat.support) == (pytest.approx(3 / 4), 3 / 4, 4)
    assert (dog.precision, dog.recall, dog.support) == (0.5, 0.5, 2)
    assert cat.f1 == pytest.approx(0.75)
    assert evaluation.macro_f1 == pytest.approx((0.75 + 0.5) / 2)
    assert evaluation.recall_gap == pytest.approx(0.25)


def test_a_class_never_predicted_has_zero_precision_not_nan() -> None:
    evaluation = evaluate_predictions(np.array([0, 1, 2]), np.array([0, 0, 0]), ["a", "b", "c"])
    assert evaluation.per_class["b"].precision == 0.0
    assert evaluation.per_class["b"].f1 == 0.0
    assert evaluation.recall_gap == 1.0


def test_the_bundle_metrics_have_the_contract_keys() -> None:
    metrics = evaluate_predictions(np.array([0, 1]), np.array([0, 1]), ["cat", "dog"]).to_dict()
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= metrics.keys()
    assert metrics["per_class"]["cat"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "support": 1,
    }


@pytest.mark.parametrize(
    ("true", "pred"),
    [
        pytest.param([0, 1], [0], id="lengths-differ"),
        pytest.param([], [], id="empty"),
        pytest.param([0, 2], [0, 1], id="index-out-of-range"),
    ],
)
def test_inconsistent_inputs_are_refused(true: list[int], pred: list[int]) -> None:
    with pytest.raises(ValueError):
        evaluate_predictions(np.array(true), np.array(pred), ["cat", "dog"])


def test_the_drift_baseline_of_a_binary_model_bins_confidence_from_one_half() -> None:
    inputs = np.full((4, 1, 2, 2), 0.5, dtype=np.float32)
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [0.1, 0.0], [3.0, 0.0]])
    baseline = drift_baseline(inputs, logits, ["cat", "dog"])
    hist = baseline["confidence_hist"]
    assert hist["bins"][0] == 0.5
    assert hist["bins"][-1] == 1.0
    assert len(hist["bins"]) == 11
    assert sum(hist["counts"]) == 4
    assert hist["counts"][0] == 1  # the 0.52 confidence of the near-tie
    assert baseline["class_prior"] == {"cat": 0.75, "dog": 0.25}
    assert baseline["input_mean"] == pytest.approx(0.5)
    assert baseline["input_std"] == pytest.approx(0.0)


def test_the_drift_baseline_of_three_classes_bins_confidence_from_zero() -> None:
    baseline = drift_baseline(np.zeros((1, 1, 1, 1)), np.zeros((1, 3)), ["a", "b", "c"])
    assert baseline["confidence_hist"]["bins"][0] == 0.0


def test_softmax_rows_sum_to_one_even_for_huge_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_the_drift_baseline_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        drift_baseline(np.zeros((2, 1, 1, 1)), np.zeros((3, 2)), ["cat", "dog"])
