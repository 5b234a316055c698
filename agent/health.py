"""The health budget of a freshly swapped model, and the verdict that rolls it back.

After a swap the new model is on probation for its first ``window_s`` seconds
or ``max_frames`` frames, whichever ends first. The pipeline counts, per
model since its swap (:class:`RunStats`): frames inferred, frames whose batch
raised, frames whose outputs were NaN or infinite, and latencies. The service
asks :func:`judge` on a short cadence; the first reason it returns rolls the
model back (``agent.service``). Reasons, checked in this order::

    nan_outputs     more than max_nan_rate of the frames gave non-finite outputs
                    (default: any at all: a model that does so is numerically broken)
    error_rate      more than max_error_rate of the frames failed in ONNX Runtime
                    (judged once min_frames frames were tried)
    latency_budget  p95 latency over the profile's budget AND over latency_ratio x the
                    p95 of the model it replaced (a box that was already slow is not
                    the new model's fault); judged once latency_min_frames frames were
                    inferred, and only when there was a model before (else there is
                    nothing to roll back to, and nothing to compare with)

``smoke_test``, the fourth reason code, comes from the golden samples (at
install, and of the current slot at every start), not from this module.

:func:`judge` is pure: statistics and budget in, a reason or ``None`` out.
:class:`Rejections` remembers, across restarts, which versions were rolled
back, so that the agent does not install them again until a new hint.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import write_file_atomic

__all__ = ["REASONS", "HealthBudget", "Rejections", "RunStats", "Verdict", "judge"]

logger = logging.getLogger(__name__)

#: Every reason code a ``rolled_back`` event may carry.
REASONS = ("nan_outputs", "error_rate", "latency_budget", "smoke_test")

_MAX_LATENCIES = 2000


@dataclass
class RunStats:
    """What one model did since it was swapped in (the pipeline fills it)."""

    model: str | None = None
    version: str | None = None
    frames: int = 0
    errors: int = 0
    nonfinite: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def tried(self) -> int:
        """Frames given to the model: inferred, failed, or non-finite."""
        return self.frames + self.errors + self.nonfinite

    def add_latency(self, ms: float) -> None:
        """Record one latency; only the newest few thousand are kept."""
        self.latencies.append(ms)
        if len(self.latencies) > _MAX_LATENCIES:
            del self.latencies[: _MAX_LATENCIES // 2]

    def p95(self) -> float | None:
        """The 95th percentile latency in ms, or ``None`` before any frame."""
        if not self.latencies:
            return None
        return float(np.percentile(np.asarray(self.latencies), 95))

    def copy(self) -> RunStats:
        """A snapshot that later frames do not change."""
        return RunStats(
            self.model, self.version, self.frames, self.errors, self.nonfinite, list(self.latencies)
        )


@dataclass(frozen=True)
class HealthBudget:
    """How a new model must behave on probation.

    Args:
        window_s: probation length after the swap.
        max_frames: probation also ends after this many frames.
        min_frames: rates and latency are judged only after this many frames.
        max_error_rate: the largest share of frames whose batch may fail.
        max_nan_rate: the largest share of frames that may give NaN/inf outputs.
        latency_p95_ms: the profile's latency budget.
        latency_ratio: how much slower than the model it replaced a model may be
            before being over budget counts against it.
        latency_min_frames: latency is judged only after this many frames (the
            first batches of a new session are slower, and one spike is not a trend).
    """

    window_s: float = 60.0
    max_frames: int = 2000
    min_frames: int = 20
    max_error_rate: float = 0.05
    max_nan_rate: float = 0.0
    latency_p95_ms: float = 100.0
    latency_ratio: float = 1.5
    latency_min_frames: int = 100

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.max_frames < 1 or self.min_frames < 1:
            raise ValueError("window_s, max_frames and min_frames must be positive")
        for name in ("max_error_rate", "max_nan_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} should be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Verdict:
    """Why a model failed its probation: a reason code and a sentence."""

    reason: str
    message: str


def judge(stats: RunStats, budget: HealthBudget, baseline_p95: float | None) -> Verdict | None:
    """The first broken rule of the budget, or ``None`` while the model behaves.

    Args:
        stats: the model's statistics since its swap.
        budget: the rules.
        baseline_p95: the p95 latency of the model it replaced, if known.

    Returns:
        A verdict with one of :data:`REASONS`, or ``None``.

    Raises:
        Nothing.
    """
    tried = stats.tried
    if stats.nonfinite and stats.nonfinite / tried > budget.max_nan_rate:
        return Verdict(
            "nan_outputs",
            f"{stats.nonfinite} of {tried} frames gave NaN or infinite outputs "
            f"(allowed: {budget.max_nan_rate:.0%})",
        )
    if tried >= budget.min_frames and stats.errors / tried > budget.max_error_rate:
        return Verdict(
            "error_rate",
            f"{stats.errors} of {tried} frames failed in the runtime "
            f"(allowed: {budget.max_error_rate:.0%})",
        )
    p95 = stats.p95()
    if (
        baseline_p95 is not None
        and p95 is not None
        and stats.frames >= budget.latency_min_frames
        and p95 > budget.latency_p95_ms
        and p95 > budget.latency_ratio * baseline_p95
    ):
        return Verdict(
            "latency_budget",
            f"p95 latency {p95:.1f} ms over the budget of {budget.latency_p95_ms:g} ms "
            f"and {p95 / max(baseline_p95, 1e-9):.1f}x the previous model's {baseline_p95:.1f} ms",
        )
    return None


class Rejections:
    """Versions rolled back on this device, persisted in ``{data_dir}/rejected.json``.

    A rejected version is not installed again until the registry issues a
    desired hint newer than the one in force when it was rejected (a new
    rollout: an operator asking again). The file survives restarts, so the
    retained hint that replays at every connect does not reinstall it.

    Args:
        path: the JSON file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            data = json.loads(self.path.read_bytes())
            for entry in data["versions"]:
                self._entries[(str(entry["model"]), str(entry["version"]))] = dict(entry)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.error("%s is unreadable (%s); no version is marked as rejected", self.path, e)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def reason(self, key: tuple[str, str]) -> str | None:
        """Why ``key`` was rejected, or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else str(entry["reason"])

    def add(self, key: tuple[str, str], reason: str, hint_seq: int) -> None:
        """Reject ``key`` until a desired hint with a seq above ``hint_seq``.

        Raises:
            OSError: the file cannot be written.
        """
        with self._lock:
            self._entries[key] = {
                "model": key[0],
                "version": key[1],
                "reason": reason,
                "hint_seq": hint_seq,
            }
            self._save()

    def clear_if_newer(self, key: tuple[str, str], hint_seq: int) -> bool:
        """Forget ``key`` if ``hint_seq`` is newer than the hint it was rejected under.

        Returns:
            Whether it was forgotten.

        Raises:
            OSError: the file cannot be written.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or hint_seq <= int(entry["hint_seq"]):
                return False
            del self._entries[key]
            self._save()
            return True

    def _save(self) -> None:
        body = {"versions": list(self._entries.values())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.path, json.dumps(body, indent=2).encode() + b"\n")
