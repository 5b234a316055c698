"""Classification metrics on the held-out split, in plain numpy.

The figures go into the bundle's ``metrics`` (docs/contracts.md): accuracy, macro
F1, per-class precision, recall, F1 and support, the confusion matrix (rows are
the true class, columns the predicted one), and the recall gap, the spread between
the best- and worst-recognised class, which a single accuracy figure hides.
A class that is never predicted has precision 0 rather than an undefined value.

Calibration: the expected calibration error (ECE) bins the test samples by top-1
confidence (equal-width bins over [0, 1]) and averages |accuracy - confidence|
over the bins, weighted by their share of samples. A model that says 0.9 and is
right 90 % of the time has ECE 0; the agent's confidence histograms only mean
something if it is small. :func:`reliability` gives the per-bin figures the
report draws.

The drift baseline is what the agent compares live traffic against, where there
are no labels: the predicted class mix, the histogram of top-1 confidence and the
pixel statistics of the preprocessed input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ClassMetrics",
    "Evaluation",
    "drift_baseline",
    "evaluate_predictions",
    "expected_calibration_error",
    "reliability",
    "softmax",
]


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class."""

    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        """The bundle's per-class entry."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


@dataclass(frozen=True)
class Evaluation:
    """How a model did on a labelled split."""

    labels: tuple[str, ...]
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion: list[list[int]]
    recall_gap: float
    samples: int
    ece: float | None = None  # needs probabilities; None when only labels were given

    def to_dict(self) -> dict[str, Any]:
        """The bundle's ``metrics`` object."""
        return {
            "split": "test",
            "samples": self.samples,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "recall_gap": self.recall_gap,
            "expected_calibration_error": self.ece,
            "per_class": {name: m.to_dict() for name, m in self.per_class.items()},
            "confusion": self.confusion,
        }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def evaluate_predictions(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> Evaluation:
    """Compute the metrics of predicted against true label indices.

    Args:
        y_true: (N,) true label indices into ``labels``.
        y_pred: (N,) predicted label indices.
        labels: the class names.

    Returns:
        The evaluation.

    Raises:
        ValueError: the arrays differ in length, are empty, or hold an index
            outside ``labels``.
    """
    k = len(labels)
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(f"expected two equal, non-empty 1-D arrays, got {true.shape} {pred.shape}")
    if min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= k:
        raise ValueError(f"label indices should be 0..{k - 1}")
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    per_class: dict[str, ClassMetrics] = {}
    for i, name in enumerate(labels):
        hits = int(confusion[i, i])
        precision = _ratio(hits, int(confusion[:, i].sum()))
        recall = _ratio(hits, int(confusion[i, :].sum()))
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[name] = ClassMetrics(precision, recall, f1, int(confusion[i, :].sum()))
    recalls = [m.recall for m in per_class.values()]
    return Evaluation(
        labels=tuple(labels),
        accuracy=float(np.trace(confusion) / len(true)),
        macro_f1=float(np.mean([m.f1 for m in per_class.values()])),
        per_class=per_class,
        confusion=confusion.tolist(),
        recall_gap=float(max(recalls) - min(recalls)),
        samples=len(true),
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64.

    Args:
        logits: (N, K) scores.

    Returns:
        (N, K) probabilities, each row summing to 1.

    Raises:
        ValueError: ``logits`` is not two-dimensional.
    """
    if logits.ndim != 2:
        raise ValueError(f"expected (N, K) logits, got shape {logits.shape}")
    values = logits.astype(np.float64)
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Per confidence bin: its edges, sample count, mean confidence and accuracy.

    Args:
        probs: (N, K) probabilities.
        y_true: (N,) true label indices.
        bins: equal-width bins over [0, 1] of the top-1 confidence.

    Returns:
        One dict per bin: ``low``, ``high``, ``count``, ``confidence`` and
        ``accuracy`` (both ``None`` for an empty bin).

    Raises:
        ValueError: the shapes disagree, there are no samples, or ``bins`` < 1.
    """
    if probs.ndim != 2 or len(probs) != len(y_true) or len(probs) == 0 or bins < 1:
        raise ValueError(f"expected (N, K) probabilities and N labels, got {probs.shape}")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 joins bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        mask = which == i
        count = int(mask.sum())
        out.append(
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "count": count,
                "confidence": float(confidence[mask].mean()) if count else None,
                "accuracy": float(correct[mask].mean()) if count else None,
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """The sample-weighted mean |accuracy - confidence| over confidence bins.

    Args:
        probs: (N, K) probabilities.
        y_true: (N,) true label indices.
        bins: equal-width bins over [0, 1].

    Returns:
        The ECE, 0 (calibrated) to 1.

    Raises:
        ValueError: the shapes disagree or there are no samples.
    """
    total = len(probs)
    return float(
        sum(
            b["count"] / total * abs(b["accuracy"] - b["confidence"])
            for b in reliability(probs, y_true, bins)
            if b["count"]
        )
    )


def drift_baseline(
    inputs: np.ndarray, logits: np.ndarray, labels: Sequence[str], bins: int = 10
) -> dict[str, Any]:
    """The bundle's ``drift_baseline`` from a model's outputs on held-out inputs.

    Args:
        inputs: the preprocessed inputs, float32 (N, C, H, W).
        logits: the model's (N, K) logits on them.
        labels: the K class names.
        bins: the number of confidence histogram bins.

    Returns:
        ``class_prior`` (share of predictions per label), ``confidence_hist``
        (``bins``: the ``bins + 1`` edges, over [0.5, 1] for two classes since a
        binary model's top-1 confidence is never below 0.5, else over [0, 1];
        ``counts``), ``input_mean`` and ``input_std`` over all input values, and
        ``samples``.

    Raises:
        ValueError: the shapes do not agree or there are no inputs.
    """
    if len(inputs) == 0 or len(inputs) != len(logits) or logits.shape[1] != len(labels):
        raise ValueError(
            f"expected N inputs and (N, {len(labels)}) logits, got {inputs.shape} {logits.shape}"
        )
    probs = softmax(logits)
    predicted = probs.argmax(axis=1)
    edges = np.linspace(0.5 if len(labels) == 2 else 0.0, 1.0, bins + 1)
    counts, _ = np.histogram(probs.max(axis=1), bins=edges)
    return {
        "source": "test split",
        "samples": len(inputs),
        "class_prior": {name: float(np.mean(predicted == i)) for i, name in enumerate(labels)},
        "confidence_hist": {"bins": [float(e) for e in edges], "counts": counts.tolist()},
        "input_mean": float(inputs.mean(dtype=np.float64)),
        "input_std": float(inputs.std(dtype=np.float64)),
    }
