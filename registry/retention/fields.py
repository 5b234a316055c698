"""Figures: the numbers a stored report carries, and how a bucket folds each.

:func:`figures` reads a report's payload into its kind's fields
(:data:`FIELDS`), a number or None each: a missing, non-numeric or
non-finite value is None, never an error, since ingest stores what an agent
of any version sent. :data:`RULES` says how a bucket's figure for a field
comes from its reports' values; :class:`registry.retention.fold.Fold` applies
it. Kinds without figures (status, events) are absent from both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = ["FIELDS", "RULES", "Rule", "figures", "number"]


def number(value: Any) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _most(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _gpu_memory_percent(gpu: dict[str, Any]) -> float | None:
    used, total = number(gpu.get("memory_used_mb")), number(gpu.get("memory_total_mb"))
    return 100.0 * used / total if used is not None and total else None


def _telemetry(body: dict[str, Any]) -> dict[str, float | None]:
    gpus = body.get("gpus")
    gpus = [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []
    power = [p for g in gpus if (p := number(g.get("power_w"))) is not None]
    return {
        "cpu_percent": number(body.get("cpu_percent")),
        "memory_percent": number(body.get("memory_percent")),
        "disk_percent": number(body.get("disk_percent")),
        "gpu_temp_c": _most(number(g.get("temp_c")) for g in gpus),
        "gpu_util_percent": _most(number(g.get("util_percent")) for g in gpus),
        "gpu_memory_percent": _most(_gpu_memory_percent(g) for g in gpus),
        "gpu_power_w": sum(power) if power else None,
        "throttled": (1.0 if any(g.get("throttle_reasons") for g in gpus) else 0.0)
        if gpus
        else None,
    }


def _inference(body: dict[str, Any]) -> dict[str, float | None]:
    latency = body.get("latency_ms")
    latency = latency if isinstance(latency, dict) else {}
    return {
        "fps": number(body.get("fps")),
        "p50_ms": number(latency.get("p50")),
        "p95_ms": number(latency.get("p95")),
        "p99_ms": number(latency.get("p99")),
        "frames": number(body.get("frames")),
        "drops": number(body.get("drops")),
        "errors": number(body.get("errors")),
        "queue_depth": number(body.get("queue_depth")),
    }


def _accuracy(body: dict[str, Any]) -> dict[str, float | None]:
    return {
        "accuracy": number(body.get("accuracy")),
        "labelled": number(body.get("labelled")),
        "correct": number(body.get("correct")),
    }


_EXTRACT: dict[str, Callable[[dict[str, Any]], dict[str, float | None]]] = {
    "inference": _inference,
    "accuracy": _accuracy,
    "telemetry": _telemetry,
}

#: The numeric fields of each kind that has figures, in the order charts get them.
FIELDS: dict[str, list[str]] = {kind: list(f({})) for kind, f in _EXTRACT.items()}

Rule = Literal["mean", "weighted", "max", "sum", "rate", "ratio"]

#: How a bucket's figure comes from its reports' values of a field:
#: ``mean``; ``weighted`` (by frames); ``max``; ``sum``; ``rate`` (fps: frames
#: over seconds, the bucket's true mean rate); ``ratio`` (accuracy: correct over
#: labelled, exact). p95 and p99 take the worst window's: a bucket's p95 needs
#: the latency distribution, which reports do not carry, and the greatest of
#: the windows' p95s is an upper bound of it (at most 5 % of each window's
#: frames, so of all, are slower), while a mean of p95s is neither a bound
#: nor a percentile and would average a bad window away.
RULES: dict[str, dict[str, Rule]] = {
    "inference": {
        "fps": "rate", "p50_ms": "weighted", "p95_ms": "max", "p99_ms": "max",
        "frames": "sum", "drops": "sum", "errors": "sum", "queue_depth": "mean",
    },
    "accuracy": {"accuracy": "ratio", "labelled": "sum", "correct": "sum"},
    "telemetry": dict.fromkeys(FIELDS["telemetry"], "mean"),
}  # fmt: skip


def figures(kind: str, payload: dict[str, Any]) -> dict[str, float | None]:
    """The numeric fields (:data:`FIELDS`) of one stored report of ``kind``.

    Args:
        kind: a kind in :data:`FIELDS`.
        payload: the report's stored payload.

    Returns:
        Each field of the kind, a number or None where the report lacks it.

    Raises:
        KeyError: ``kind`` has no figures.
    """
    return _EXTRACT[kind](payload)
