"""A/B experiments: one selection split in two cohorts on two versions, compared.

An experiment is two immediate rollouts made together (``A``, the control,
and ``B``, the candidate) over the two halves of a selection, split by a
hash of the experiment's name and the device id, so a device stays in its
cohort if the experiment is re-run. Both rollouts carry the experiment's
name in their plan. The comparison reads what each cohort reported on its
version since it converged and gives the difference B - A of accuracy and
of p95 latency with a 95 % confidence interval (normal approximation: Wald
for the two proportions, Welch for the mean of window p95s). Labels on
consecutive frames are not independent, so the accuracy interval is
narrower than the truth: read it as a lower bound on the uncertainty.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from registry.rollout.gates import Windows

__all__ = ["Difference", "compare", "in_b"]

Z95 = 1.959964


@dataclass(frozen=True)
class Difference:
    """B minus A for one figure, with its 95 % confidence interval."""

    figure: str
    a: float | None
    b: float | None
    diff: float | None
    low: float | None
    high: float | None
    n_a: int
    n_b: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``significant``."""
        return {**asdict(self), "significant": self.significant}


def in_b(experiment: str, device_id: str, split: float) -> bool:
    """Whether ``device_id`` falls in cohort B (the candidate) for ``split`` (B's share)."""
    digest = hashlib.sha256(f"ab:{experiment}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < split


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def _accuracy(a: Windows, b: Windows) -> Difference:
    if not a.labelled or not b.labelled:
        return Difference(
            "accuracy", _r(a.accuracy), _r(b.accuracy), None, None, None, a.labelled, b.labelled
        )
    pa, pb = a.correct / a.labelled, b.correct / b.labelled
    se = math.sqrt(pa * (1 - pa) / a.labelled + pb * (1 - pb) / b.labelled)
    diff = pb - pa
    return Difference(
        "accuracy",
        _r(pa),
        _r(pb),
        _r(diff),
        _r(diff - Z95 * se),
        _r(diff + Z95 * se),
        a.labelled,
        b.labelled,
    )


def _latency(a: Windows, b: Windows) -> Difference:
    if len(a.p95_ms) < 2 or len(b.p95_ms) < 2:
        ma = statistics.fmean(a.p95_ms) if a.p95_ms else None
        mb = statistics.fmean(b.p95_ms) if b.p95_ms else None
        return Difference("p95_ms", _r(ma), _r(mb), None, None, None, len(a.p95_ms), len(b.p95_ms))
    ma, mb = statistics.fmean(a.p95_ms), statistics.fmean(b.p95_ms)
    se = math.sqrt(
        statistics.variance(a.p95_ms) / len(a.p95_ms)
        + statistics.variance(b.p95_ms) / len(b.p95_ms)
    )
    diff = mb - ma
    return Difference(
        "p95_ms",
        _r(ma),
        _r(mb),
        _r(diff),
        _r(diff - Z95 * se),
        _r(diff + Z95 * se),
        len(a.p95_ms),
        len(b.p95_ms),
    )


def compare(a: Windows, b: Windows) -> list[Difference]:
    """Accuracy and p95 latency of B against A."""
    return [_accuracy(a, b), _latency(a, b)]
