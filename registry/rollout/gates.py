"""The gates of a rollout stage: numbers from agent reports, judged against the plan's rules.

Pure functions over what the agents sent (``inference``, ``accuracy`` and
``telemetry`` bodies), so they can be tested without a fleet. Each gate
returns a :class:`GateResult` with its numbers, stored with the rollout as
the record of why it advanced or stopped.

The comparisons are against the *same devices* on the version they ran
before (their baseline windows), because a camera at a dim gate and a
camera in a sunny field do not have the same accuracy whatever the model.
Accuracy uses a one-sided two-proportion z-test on the labelled counts
rather than a bare difference of two small samples: with 40 labels each,
0.90 against 0.85 is noise; with 2,000 each it is not. Labels on
consecutive frames of one camera are not independent, so the test is
optimistic about sample size; the margin (two points by default) and the
stage's minimum label count are what keep that honest.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from registry.rollout.plan import GateRules

__all__ = [
    "GateResult",
    "Windows",
    "accuracy_test",
    "evaluate",
    "js_distance",
]

PASS, FAIL, NO_DATA = "pass", "fail", "no data"


@dataclass
class GateResult:
    """One gate's verdict and the numbers behind it."""

    name: str
    status: str
    value: float | None
    threshold: float | None
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether this gate stops the rollout."""
        return self.status == FAIL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored and served."""
        return asdict(self)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Windows:
    """What a set of devices reported over a period, summed up for the gates."""

    windows: int = 0
    frames: int = 0
    errors: int = 0
    fps: list[float] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0
    predicted: Counter[str] = field(default_factory=Counter)
    gpu_temp_max_c: float | None = None
    throttled_windows: int = 0

    def add_inference(self, body: Mapping[str, Any]) -> None:
        """Fold one ``inference`` body in."""
        self.windows += 1
        self.frames += int(body.get("frames") or 0)
        self.errors += int(body.get("errors") or 0)
        if (fps := _num(body.get("fps"))) is not None:
            self.fps.append(fps)
        latency = body.get("latency_ms")
        if isinstance(latency, Mapping) and (p95 := _num(latency.get("p95"))) is not None:
            self.p95_ms.append(p95)
        counts = body.get("class_counts")
        if isinstance(counts, Mapping):
            for label, n in counts.items():
                if isinstance(n, int) and n > 0:
                    self.predicted[str(label)] += n

    def add_accuracy(self, body: Mapping[str, Any]) -> None:
        """Fold one ``accuracy`` body in."""
        self.labelled += int(body.get("labelled") or 0)
        self.correct += int(body.get("correct") or 0)

    def add_telemetry(self, body: Mapping[str, Any]) -> None:
        """Fold one ``telemetry`` body in (GPU temperature and throttling)."""
        throttled = False
        for gpu in body.get("gpus") or []:
            if not isinstance(gpu, Mapping):
                continue
            if (temp := _num(gpu.get("temp_c"))) is not None:
                self.gpu_temp_max_c = max(self.gpu_temp_max_c or temp, temp)
            reasons = gpu.get("throttle_reasons")
            if reasons and any(r for r in reasons if "idle" not in str(r).lower()):
                throttled = True
        self.throttled_windows += int(throttled)

    def add(self, kind: str, body: Mapping[str, Any]) -> None:
        """Fold one body of any kind in; other kinds are ignored."""
        if kind == "inference":
            self.add_inference(body)
        elif kind == "accuracy":
            self.add_accuracy(body)
        elif kind == "telemetry":
            self.add_telemetry(body)

    @property
    def accuracy(self) -> float | None:
        """Correct over labelled, or None without labels."""
        return self.correct / self.labelled if self.labelled else None

    @property
    def p95(self) -> float | None:
        """The median of the windows' p95 latencies (robust to one slow window)."""
        return statistics.median(self.p95_ms) if self.p95_ms else None

    @property
    def mean_fps(self) -> float | None:
        """Mean frames per second over windows."""
        return statistics.fmean(self.fps) if self.fps else None

    def summary(self) -> dict[str, Any]:
        """The figures, for the gate record."""
        return {
            "windows": self.windows,
            "frames": self.frames,
            "errors": self.errors,
            "fps": _round(self.mean_fps),
            "p95_ms": _round(self.p95),
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": _round(self.accuracy),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def accuracy_test(
    old_correct: int, old_n: int, new_correct: int, new_n: int, margin: float
) -> tuple[float, float]:
    """One-sided test of "the new accuracy is below the old one minus ``margin``".

    Returns:
        ``(z, p_value)``: a small p-value means the new version is worse by more
        than the margin. With no labels on either side: ``(0.0, 1.0)``.
    """
    if old_n <= 0 or new_n <= 0:
        return 0.0, 1.0
    p_old, p_new = old_correct / old_n, new_correct / new_n
    variance = p_old * (1 - p_old) / old_n + p_new * (1 - p_new) / new_n
    # A perfect sample on both sides has no variance; a continuity floor keeps
    # the statistic finite and conservative.
    variance = max(variance, 0.25 / (old_n + new_n) ** 2)
    z = ((p_old - margin) - p_new) / math.sqrt(variance)
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def js_distance(observed: Mapping[str, float], expected: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two class distributions."""
    labels = sorted(set(observed) | set(expected))
    p = [max(float(observed.get(k, 0.0)), 0.0) for k in labels]
    q = [max(float(expected.get(k, 0.0)), 0.0) for k in labels]
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0:
        return 0.0
    p = [x / sp for x in p]
    q = [x / sq for x in q]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


def _install(rules: GateRules, moved: int, failed: int) -> GateResult:
    percent = 100.0 * failed / moved if moved else 0.0
    return GateResult(
        "install",
        FAIL if percent > rules.max_install_failure_percent else PASS,
        round(percent, 2),
        rules.max_install_failure_percent,
        f"{failed} of {moved} device(s) failed to install or rolled back ({percent:.1f} %)",
        {"moved": moved, "failed": failed},
    )


def _errors(rules: GateRules, new: Windows) -> GateResult:
    if not new.frames:
        return GateResult("errors", NO_DATA, None, rules.max_error_rate, "no frames yet")
    rate = new.errors / new.frames
    return GateResult(
        "errors",
        FAIL if rate > rules.max_error_rate else PASS,
        round(rate, 5),
        rules.max_error_rate,
        f"{new.errors} error(s) in {new.frames} frames",
    )


def _latency(rules: GateRules, new: Windows, old: Windows) -> GateResult:
    if new.p95 is None or old.p95 is None or old.p95 <= 0:
        return GateResult(
            "latency", NO_DATA, None, rules.max_p95_latency_ratio, "no latency to compare"
        )
    ratio = new.p95 / old.p95
    return GateResult(
        "latency",
        FAIL if ratio > rules.max_p95_latency_ratio else PASS,
        round(ratio, 3),
        rules.max_p95_latency_ratio,
        f"p95 {new.p95:.2f} ms against {old.p95:.2f} ms before (x{ratio:.2f})",
        {"new_p95_ms": _round(new.p95), "old_p95_ms": _round(old.p95)},
    )


def _fps(rules: GateRules, new: Windows, old: Windows) -> GateResult:
    new_fps, old_fps = new.mean_fps, old.mean_fps
    if new_fps is None or old_fps is None or old_fps <= 0:
        return GateResult("fps", NO_DATA, None, rules.min_fps_ratio, "no frame rate to compare")
    ratio = new_fps / old_fps
    return GateResult(
        "fps",
        FAIL if ratio < rules.min_fps_ratio else PASS,
        round(ratio, 3),
        rules.min_fps_ratio,
        f"{new_fps:.1f} fps against {old_fps:.1f} before (x{ratio:.2f})",
    )


def _accuracy(rules: GateRules, new: Windows, old: Windows, min_baseline: int) -> GateResult:
    if not new.labelled:
        return GateResult("accuracy", NO_DATA, None, rules.accuracy_alpha, "no labelled frames yet")
    new_acc = new.correct / new.labelled
    thin = ""
    if 0 < old.labelled < min_baseline:
        # Too few labels on the old version to tell ten points from noise: say so,
        # and judge by the floor if there is one, rather than pass on a weak test.
        thin = f"; the old version has only {old.labelled} labels (< {min_baseline})"
    if old.labelled and not thin:
        z, p = accuracy_test(
            old.correct, old.labelled, new.correct, new.labelled, rules.accuracy_margin
        )
        old_acc = old.correct / old.labelled
        worse = p < rules.accuracy_alpha
        return GateResult(
            "accuracy",
            FAIL if worse else PASS,
            round(new_acc - old_acc, 4),
            rules.accuracy_alpha,
            f"{new_acc:.3f} ({new.labelled} labels) against {old_acc:.3f} ({old.labelled}) "
            f"before; one-sided p={p:.3g} for 'worse by more than {rules.accuracy_margin:g}'",
            {"z": round(z, 3), "p_value": p, "new": _round(new_acc), "old": _round(old_acc)},
        )
    if rules.min_accuracy is not None:
        return GateResult(
            "accuracy",
            FAIL if new_acc < rules.min_accuracy else PASS,
            round(new_acc, 4),
            rules.min_accuracy,
            f"{new_acc:.3f} on {new.labelled} labels; no baseline{thin}, against the floor",
        )
    return GateResult(
        "accuracy",
        NO_DATA,
        round(new_acc, 4),
        None,
        f"{new_acc:.3f} on {new.labelled} labels; no baseline{thin}, and no min_accuracy "
        "to judge by",
    )


def _drift(rules: GateRules, new: Windows, prior: Mapping[str, float] | None) -> GateResult:
    if not prior or not new.predicted:
        return GateResult("drift", NO_DATA, None, rules.max_drift, "no class prior or predictions")
    distance = js_distance(new.predicted, prior)
    return GateResult(
        "drift",
        FAIL if distance > rules.max_drift else PASS,
        round(distance, 4),
        rules.max_drift,
        f"predicted classes {dict(new.predicted)} against the bundle's prior: "
        f"Jensen-Shannon distance {distance:.3f}",
    )


def _gpu(rules: GateRules, new: Windows) -> GateResult:
    if new.gpu_temp_max_c is None:
        return GateResult("gpu", NO_DATA, None, rules.max_gpu_temp_c, "no GPU telemetry")
    hot = rules.max_gpu_temp_c is not None and new.gpu_temp_max_c > rules.max_gpu_temp_c
    return GateResult(
        "gpu",
        FAIL if hot or new.throttled_windows else PASS,
        new.gpu_temp_max_c,
        rules.max_gpu_temp_c,
        f"hottest {new.gpu_temp_max_c:.0f} C; {new.throttled_windows} throttled window(s)",
    )


def evaluate(
    rules: GateRules,
    moved: int,
    failed: int,
    new: Windows,
    old: Windows,
    prior: Mapping[str, float] | None = None,
    min_baseline: int = 0,
) -> list[GateResult]:
    """Every gate of a stage.

    Args:
        rules: the plan's thresholds.
        moved: devices moved so far.
        failed: of those, how many failed to install, rolled back locally or timed out.
        new: the moved devices' reports on the new version since they converged.
        old: the same devices' reports on their previous version before they moved.
        prior: the new bundle's class prior (``drift_baseline.class_prior``).
        min_baseline: fewer labels than this on the old version are no baseline.
    """
    return [
        _install(rules, moved, failed),
        _errors(rules, new),
        _latency(rules, new, old),
        _fps(rules, new, old),
        _accuracy(rules, new, old, min_baseline),
        _drift(rules, new, prior),
        _gpu(rules, new),
    ]


def failures(results: Iterable[GateResult]) -> list[GateResult]:
    """The gates that stop the rollout."""
    return [r for r in results if r.failed]
