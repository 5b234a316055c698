"""A bucket's reports, folded into statistics that merge exactly.

A :class:`Fold` is what one ``series_buckets`` row stores (``figures``, as
:meth:`Fold.to_json` writes it): sums, counts and peaks, never a mean, so
two buckets merge into the fold of all their reports. That is what lets a
crash-interrupted bucket be topped up later, and a chart regroup hourly
buckets into days (:func:`registry.retention.buckets.read_buckets`), without
a figure drifting. :meth:`Fold.point` turns a fold into the figures charts
show, field by field as :data:`registry.retention.fields.RULES` says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.retention.fields import RULES, Rule, figures, number
from registry.tables import SeriesBucket

__all__ = ["Fold"]

_PER_CLASS_COUNTS = ("support", "predicted", "true_positives")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class Fold:
    """The reports of one bucket, folded so that buckets merge exactly.

    ``stats[field]`` is ``[n, total, weight, peak]``: how many reports carried
    the field, the sum of value times weight (the weight is the window's frames
    for ``weighted`` fields, else 1), the sum of weights, and the greatest
    value. Beside them: seconds of inference covered (for fps), class counts,
    per-class support/predicted/true positives, and the confidence histogram,
    all summed.
    """

    kind: str
    reports: int = 0
    last_seq: int = 0
    stats: dict[str, list[float]] = field(default_factory=dict)
    window_s: float = 0.0
    classes: Counter[str] = field(default_factory=Counter)
    per_class: dict[str, Counter[str]] = field(default_factory=dict)
    hist: dict[str, list[float]] = field(default_factory=dict)

    def add(self, seq: int, payload: dict[str, Any]) -> None:
        """Fold in one report (its stored payload)."""
        self.reports += 1
        self.last_seq = max(self.last_seq, seq)
        values = figures(self.kind, payload)
        frames = values.get("frames") or 0.0
        for name, value in values.items():
            if value is None:
                continue
            weight = frames if RULES[self.kind][name] == "weighted" else 1.0
            self._stat(name, [1, value * weight, weight, value])
        if self.kind == "inference":
            self.window_s += number(payload.get("window_s")) or 0.0
            counts = payload.get("class_counts")
            if isinstance(counts, dict):
                self.classes.update({str(k): int(v) for k, v in counts.items() if _count(v)})
            hist = payload.get("confidence_hist")
            if isinstance(hist, dict):
                self._hist(hist.get("bins"), hist.get("counts"))
        elif self.kind == "accuracy" and isinstance(payload.get("per_class"), dict):
            for label, entry in payload["per_class"].items():
                if isinstance(entry, dict):
                    got = {k: int(entry[k]) for k in _PER_CLASS_COUNTS if _count(entry.get(k))}
                    self.per_class.setdefault(str(label), Counter()).update(got)

    def merge(self, other: Fold) -> None:
        """Fold in another bucket's reports."""
        self.reports += other.reports
        self.last_seq = max(self.last_seq, other.last_seq)
        for name, stat in other.stats.items():
            self._stat(name, stat)
        self.window_s += other.window_s
        self.classes.update(other.classes)
        for label, counts in other.per_class.items():
            self.per_class.setdefault(label, Counter()).update(counts)
        if other.hist:
            self._hist(other.hist["bins"], other.hist["counts"])

    def _stat(self, name: str, stat: Sequence[float]) -> None:
        mine = self.stats.get(name)
        if mine is None:
            self.stats[name] = list(stat)
            return
        mine[0] += stat[0]
        mine[1] += stat[1]
        mine[2] += stat[2]
        mine[3] = max(mine[3], stat[3])

    def _hist(self, bins: Any, counts: Any) -> None:
        if not (isinstance(bins, list) and isinstance(counts, list)):
            return
        if not all(_count(c) for c in counts):
            return
        if not self.hist:
            self.hist = {"bins": list(bins), "counts": [int(c) for c in counts]}
        elif self.hist["bins"] == bins and len(self.hist["counts"]) == len(counts):
            mine = self.hist["counts"]
            self.hist["counts"] = [a + int(b) for a, b in zip(mine, counts, strict=True)]
        # Other bins (a new agent mid-bucket): the bucket keeps the first histogram's.

    def point(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """The bucket's figure for each field (:data:`RULES`), and each field's peak.

        Returns:
            ``(values, peaks)``, both keyed by :data:`FIELDS` of the kind.
        """
        values: dict[str, float | None] = {}
        peaks: dict[str, float | None] = {}
        for name, rule in RULES[self.kind].items():
            stat = self.stats.get(name)
            peaks[name] = stat[3] if stat else None
            values[name] = None if stat is None else self._figure(rule, stat)
        return values, peaks

    def _figure(self, rule: Rule, stat: list[float]) -> float | None:
        n, total, weight, peak = stat
        if rule == "max":
            return peak
        if rule == "sum":
            return total
        if rule == "rate" and self.window_s > 0 and "frames" in self.stats:
            return self.stats["frames"][1] / self.window_s
        if rule == "ratio":
            labelled, correct = self.stats.get("labelled"), self.stats.get("correct")
            if labelled is not None and correct is not None:
                return correct[1] / labelled[1] if labelled[1] else None
        if rule == "weighted":
            return total / weight if weight else None
        return total / n  # mean; also rate and ratio when their parts are missing

    def to_json(self) -> dict[str, Any]:
        """What ``series_buckets.figures`` stores."""
        return {
            "stats": self.stats,
            "window_s": self.window_s,
            "classes": dict(self.classes),
            "per_class": {label: dict(c) for label, c in self.per_class.items()},
            "hist": self.hist,
        }

    @classmethod
    def from_row(cls, row: SeriesBucket) -> Fold:
        """The fold a stored bucket holds."""
        data = row.figures or {}
        return cls(
            kind=row.kind,
            reports=row.reports,
            last_seq=row.last_seq,
            stats={k: list(v) for k, v in data.get("stats", {}).items()},
            window_s=float(data.get("window_s", 0.0)),
            classes=Counter(data.get("classes", {})),
            per_class={k: Counter(v) for k, v in data.get("per_class", {}).items()},
            hist=dict(data.get("hist") or {}),
        )
