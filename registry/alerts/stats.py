"""Small statistics for drift detection, with no SciPy: tests, distances, and FDR control.

- :func:`chi2_sf`: the chi-square survival function (regularised upper
  incomplete gamma), for a goodness-of-fit test of predicted classes
  against the bundle's class prior on a small window.
- :func:`ks_sf`: the Kolmogorov distribution's survival function, for a
  two-sample KS test on binned confidence histograms of a small window.
- :func:`psi` and :func:`js_distance`: effect sizes for large windows, where
  any difference is "significant" and only its size matters.
- :func:`benjamini_hochberg`: which of many p-values (one per device) to
  call a discovery at a false discovery rate ``q``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from registry.rollout.gates import js_distance

__all__ = [
    "benjamini_hochberg",
    "chi2_gof",
    "chi2_sf",
    "js_distance",
    "ks_sf",
    "ks_two_sample",
    "psi",
]

_EPS = 1e-12


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (Numerical Recipes' gser/gcf)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(500):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - gln))
    b = x + 1 - a
    c = 1 / 1e-300
    d = 1 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - gln) * h)


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with ``dof`` degrees of freedom."""
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    return _gamma_q(dof / 2.0, x / 2.0)


def chi2_gof(observed: Sequence[float], expected_share: Sequence[float]) -> tuple[float, float]:
    """Chi-square goodness of fit of counts against shares; ``(statistic, p_value)``.

    Classes with an expected share of zero are merged into a tiny floor, so a
    class the model never predicted before counts as strong evidence, not a
    division by zero.
    """
    n = float(sum(observed))
    if n <= 0 or len(observed) < 2:
        return 0.0, 1.0
    total_share = float(sum(expected_share)) or 1.0
    stat = 0.0
    for o, share in zip(observed, expected_share, strict=True):
        e = max(n * share / total_share, 1e-3)
        stat += (o - e) ** 2 / e
    return stat, chi2_sf(stat, len(observed) - 1)


def ks_sf(lam: float) -> float:
    """Q_KS(lambda): the asymptotic survival function of the Kolmogorov statistic."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2 * (-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def ks_two_sample(
    counts_a: Sequence[float], counts_b: Sequence[float], n_a: float, n_b: float
) -> tuple[float, float]:
    """Two-sample KS on two histograms over the same bins; ``(D, p_value)``.

    ``n_a`` and ``n_b`` are the *effective* sample sizes (fewer than the
    counts when consecutive samples are correlated).
    """
    sa, sb = float(sum(counts_a)), float(sum(counts_b))
    if sa <= 0 or sb <= 0 or n_a <= 0 or n_b <= 0:
        return 0.0, 1.0
    ca = cb = d = 0.0
    for a, b in zip(counts_a, counts_b, strict=True):
        ca += a / sa
        cb += b / sb
        d = max(d, abs(ca - cb))
    en = math.sqrt(n_a * n_b / (n_a + n_b))
    return d, ks_sf((en + 0.12 + 0.11 / en) * d)


def psi(observed: Sequence[float], expected: Sequence[float]) -> float:
    """Population stability index of two histograms over the same bins."""
    so, se = float(sum(observed)), float(sum(expected))
    if so <= 0 or se <= 0:
        return 0.0
    total = 0.0
    for o, e in zip(observed, expected, strict=True):
        po, pe = max(o / so, _EPS), max(e / se, _EPS)
        total += (po - pe) * math.log(po / pe)
    return total


def benjamini_hochberg(p_values: Sequence[float], q: float) -> list[bool]:
    """Which hypotheses to reject so that the expected share of false ones is at most ``q``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    cutoff = -1
    for rank, i in enumerate(order, start=1):
        if p_values[i] <= q * rank / m:
            cutoff = rank
    rejected = [False] * m
    for rank, i in enumerate(order, start=1):
        rejected[i] = rank <= cutoff
    return rejected
