"""What one device's camera and model did over a sliding window, and how far it drifted.

:class:`DeviceWindow` sums a device's ``inference`` and ``accuracy`` reports
for its current version over the last ``window_s``: frames, predicted
classes, the confidence histogram, and per-class support, predictions and
true positives, from which come accuracy, precision, recall and F1 per class
(each with the number of labels behind it) and the per-class recall gap
(the bias figure).

:func:`drift` compares the window with the bundle's ``drift_baseline``
(class prior and confidence histogram, from the test split), choosing the
test by sample size. Consecutive camera frames are far from independent (a
cat that sits still for ten seconds is 150 near-identical frames), so counts
are divided by ``frames_per_sample`` before any test: the *effective*
sample size. Small effective windows get significance tests (chi-square on
predicted classes, two-sample KS on confidence), whose p-values the caller
combines across devices with Benjamini-Hochberg; large ones get effect sizes
(Jensen-Shannon distance on classes, PSI on confidence) against fixed
thresholds, since with enough frames any difference is significant.

:func:`decide_drift` turns one evaluation's test results, every device's at
once, into verdicts: a device's p-value (Bonferroni over its own tests),
Benjamini-Hochberg across the devices, effect sizes over their thresholds,
and the streak of evaluations in a row a device has been flagged, which must
reach ``consecutive`` before the alert fires. It is pure (the caller keeps
the streaks between evaluations), so a benchmark can drive the registry's
own decision without a database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any

from registry.alerts import stats

__all__ = ["DeviceWindow", "Drift", "DriftDecision", "decide_drift", "drift", "rebin"]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _edges(bins: Any, counts: list[Any]) -> list[float] | None:
    """Histogram edges from ``bins``: the edges themselves, or (as agents send it) the
    number of equal bins over [0, 1]. None when they do not fit ``counts``."""
    if isinstance(bins, int) and not isinstance(bins, bool) and bins == len(counts) > 0:
        return [i / bins for i in range(bins + 1)]
    if isinstance(bins, list) and len(bins) == len(counts) + 1:
        try:
            edges = [float(b) for b in bins]
        except (TypeError, ValueError):
            return None
        if all(a < b for a, b in pairwise(edges)):
            return edges
    return None


def rebin(counts: Sequence[float], edges: Sequence[float], onto: Sequence[float]) -> list[float]:
    """Move a histogram onto other bin edges, each bin's mass spread evenly over its width.

    A bundle's baseline for a two-class model bins confidence over [0.5, 1] (top-1
    confidence never falls below 0.5), the agent over [0, 1]: compared bin by bin
    as they are, the two would silently disagree.
    """
    out = [0.0] * (len(onto) - 1)
    for count, low, high in zip(counts, edges, edges[1:], strict=False):
        if count <= 0 or high <= low:
            continue
        for j, (a, b) in enumerate(pairwise(onto)):
            overlap = min(high, b) - max(low, a)
            if overlap > 0:
                out[j] += float(count) * overlap / (high - low)
    return out


@dataclass
class DeviceWindow:
    """One device's reports on one model version over a window."""

    device_id: str
    model: str | None
    version: str | None
    inference_windows: int = 0
    frames: int = 0
    predicted: Counter[str] = field(default_factory=Counter)
    confidence: list[int] = field(default_factory=list)
    confidence_bins: list[float] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0
    support: Counter[str] = field(default_factory=Counter)
    label_predicted: Counter[str] = field(default_factory=Counter)
    true_positives: Counter[str] = field(default_factory=Counter)
    last_inference_at: datetime | None = None
    #: The newest inference window of any version (a device just switched has none
    #: of its new version yet, and is not stale for it).
    last_any_inference_at: datetime | None = None

    def add(self, kind: str, body: Mapping[str, Any], received: datetime) -> None:
        """Fold one report in (reports of another version are the caller's to skip)."""
        if kind == "inference":
            self.inference_windows += 1
            self.frames += _int(body.get("frames"))
            counts = body.get("class_counts") or {}
            for label, n in counts.items():
                self.predicted[str(label)] += _int(n)
            hist = body.get("confidence_hist") or {}
            values = hist.get("counts")
            edges = _edges(hist.get("bins"), values) if isinstance(values, list) else None
            if edges is not None and isinstance(values, list):
                if self.confidence_bins != edges:
                    self.confidence = [0] * len(values)
                    self.confidence_bins = edges
                self.confidence = [
                    a + _int(b) for a, b in zip(self.confidence, values, strict=True)
                ]
            if self.last_inference_at is None or received > self.last_inference_at:
                self.last_inference_at = received
        elif kind == "accuracy":
            self.labelled += _int(body.get("labelled"))
            self.correct += _int(body.get("correct"))
            for label, figures in (body.get("per_class") or {}).items():
                if not isinstance(figures, Mapping):
                    continue
                support = _int(figures.get("support"))
                self.support[label] += support
                if "true_positives" in figures:
                    tp, predicted = _int(figures["true_positives"]), _int(figures.get("predicted"))
                else:  # an older agent: rebuild the counts from the ratios
                    tp = round(float(figures.get("recall") or 0.0) * support)
                    precision = float(figures.get("precision") or 0.0)
                    predicted = round(tp / precision) if precision > 0 else 0
                self.true_positives[label] += tp
                self.label_predicted[label] += predicted

    @property
    def accuracy(self) -> float | None:
        """Correct over labelled in the window."""
        return self.correct / self.labelled if self.labelled else None

    def per_class(self) -> dict[str, dict[str, float | int]]:
        """Precision, recall, F1 and the counts behind them, per class."""
        out: dict[str, dict[str, float | int]] = {}
        for label in sorted(set(self.support) | set(self.label_predicted)):
            support, predicted = self.support[label], self.label_predicted[label]
            tp = self.true_positives[label]
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out[label] = {
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(f1, 4),
                "support": support,
                "predicted": predicted,
            }
        return out

    def recall_gap(self, min_support: int) -> tuple[float, str, str] | None:
        """The largest recall difference between classes with ``min_support`` labels.

        Returns:
            ``(gap, best_class, worst_class)``, or None with fewer than two such classes.
        """
        recalls = {
            label: self.true_positives[label] / n
            for label, n in self.support.items()
            if n >= min_support
        }
        if len(recalls) < 2:
            return None
        best = max(recalls, key=lambda k: recalls[k])
        worst = min(recalls, key=lambda k: recalls[k])
        return recalls[best] - recalls[worst], best, worst

    def summary(self, min_support: int = 30) -> dict[str, Any]:
        """Everything above, JSON-ready, for the API and the alert record."""
        per_class = self.per_class()
        f1s = [float(c["f1"]) for c in per_class.values() if c["support"]]
        gap = self.recall_gap(min_support)
        return {
            "device_id": self.device_id,
            "model": self.model,
            "version": self.version,
            "windows": self.inference_windows,
            "frames": self.frames,
            "labelled": self.labelled,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else None,
            "per_class": per_class,
            "predicted": dict(self.predicted),
            "recall_gap": None
            if gap is None
            else {
                "gap": round(gap[0], 4),
                "best": gap[1],
                "worst": gap[2],
            },
        }


@dataclass(frozen=True)
class Drift:
    """A drift test's outcome: which test, its number, and (small windows) its p-value."""

    test: str
    value: float
    p_value: float | None
    effective_n: float
    threshold: float
    large: bool

    @property
    def beyond(self) -> bool:
        """For an effect-size test: over its threshold (p-values go through FDR control)."""
        return self.large and self.value > self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "test": self.test,
            "value": round(self.value, 5),
            "p_value": self.p_value,
            "effective_n": round(self.effective_n, 1),
            "threshold": self.threshold,
        }


def drift(
    window: DeviceWindow,
    baseline: Mapping[str, Any],
    frames_per_sample: float,
    large_n: float,
    max_js: float,
    max_psi: float,
) -> list[Drift]:
    """Class and confidence drift of ``window`` against a bundle's ``drift_baseline``.

    Returns:
        Up to two results (classes, confidence); none without baseline or frames.
    """
    results: list[Drift] = []
    prior = baseline.get("class_prior")
    n_eff = window.frames / max(frames_per_sample, 1.0)
    if isinstance(prior, Mapping) and window.predicted and n_eff > 0:
        labels = sorted(set(prior) | set(window.predicted))
        observed = [window.predicted.get(k, 0) / max(frames_per_sample, 1.0) for k in labels]
        expected = [float(prior.get(k, 0.0)) for k in labels]
        if n_eff < large_n:
            stat, p = stats.chi2_gof(observed, expected)
            results.append(Drift("chi2_classes", stat, p, n_eff, 0.0, large=False))
        else:
            distance = stats.js_distance(
                dict(zip(labels, observed, strict=True)), dict(zip(labels, expected, strict=True))
            )
            results.append(Drift("js_classes", distance, None, n_eff, max_js, large=True))
    hist = baseline.get("confidence_hist")
    if isinstance(hist, Mapping) and window.confidence:
        base = [float(c) for c in hist.get("counts") or []]
        edges = _edges(hist.get("bins"), base)
        if edges is not None and edges != window.confidence_bins:
            base = rebin(base, edges, window.confidence_bins)
        if len(base) == len(window.confidence) and sum(base) > 0:
            if n_eff < large_n:
                d, p = stats.ks_two_sample(
                    window.confidence, base, n_eff, float(baseline.get("samples") or sum(base))
                )
                results.append(Drift("ks_confidence", d, p, n_eff, 0.0, large=False))
            else:
                value = stats.psi(window.confidence, base)
                results.append(Drift("psi_confidence", value, None, n_eff, max_psi, large=True))
    return results


@dataclass(frozen=True)
class DriftDecision:
    """One device's drift verdict in one evaluation (see :func:`decide_drift`)."""

    device_id: str
    results: tuple[Drift, ...]
    #: The smallest p-value of the device's significance tests times their number
    #: (Bonferroni), capped at 1; 1.0 when it had none (large windows).
    p_value: float
    #: Benjamini-Hochberg rejects the device's p-value across the evaluation's devices.
    rejected: bool
    #: The effect-size tests over their thresholds.
    large: tuple[Drift, ...]
    #: Evaluations in a row the device has been flagged, this one included; 0 if not now.
    streak: int
    #: Flagged for at least ``consecutive`` evaluations in a row: the alert fires.
    fires: bool

    @property
    def flagged(self) -> bool:
        """Drifted in this evaluation, whether or not for long enough to fire."""
        return self.rejected or bool(self.large)


def decide_drift(
    tested: Sequence[tuple[str, Sequence[Drift]]],
    streaks: Mapping[str, int],
    fdr: float,
    consecutive: int,
) -> tuple[list[DriftDecision], dict[str, int]]:
    """One evaluation's drift verdicts for every device tested in it.

    Args:
        tested: ``(device_id, results of drift())`` for every device with results,
            each device once; Benjamini-Hochberg runs across all of them.
        streaks: each device's streak after the previous evaluation (as returned
            then; a device missing from it has none).
        fdr: the false discovery rate for Benjamini-Hochberg.
        consecutive: the evaluations in a row a device must be flagged to fire.

    Returns:
        The decisions, in the order of ``tested``, and the streaks to pass to the
        next evaluation (only the devices flagged now: any other streak ends).

    Raises:
        ValueError: a device appears twice in ``tested``.
    """
    ids = [device_id for device_id, _ in tested]
    if len(set(ids)) != len(ids):
        raise ValueError(f"expected each device once, got {sorted(ids)}")
    p_values = [
        min(
            1.0,
            min((d.p_value for d in results if d.p_value is not None), default=1.0)
            * max(1, sum(d.p_value is not None for d in results)),
        )
        for _, results in tested
    ]
    rejected = stats.benjamini_hochberg(p_values, fdr) if p_values else []
    decisions: list[DriftDecision] = []
    next_streaks: dict[str, int] = {}
    for (device_id, results), p, reject in zip(tested, p_values, rejected, strict=True):
        large = tuple(d for d in results if d.beyond)
        streak = 0
        if reject or large:
            streak = streaks.get(device_id, 0) + 1
            next_streaks[device_id] = streak
        decisions.append(
            DriftDecision(
                device_id,
                tuple(results),
                p,
                reject,
                large,
                streak,
                fires=streak > 0 and streak >= consecutive,
            )
        )
    return decisions, next_streaks
