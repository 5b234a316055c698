"""Retention: raw reports for days, their per-bucket figures for months.

What is kept, and for how long (``CORRAL_RETENTION__<FIELD>``, :class:`RetentionPolicy`):

===============  ============================================  ==================
what             kept                                          table
===============  ============================================  ==================
raw reports      ``raw_days`` (7) after they arrived           ``messages``
bucket figures   ``aggregate_days`` (400) after bucket start   ``series_buckets``
events           ``aggregate_days`` after their ``ts``         ``events``
folded seq runs  always (a few rows per device)                ``folded_ranges``
===============  ============================================  ==================

One job (:class:`Retention`, every ``interval_s``, on every replica) does, in order:

1. **Fold.** Each device's reports that are not folded yet (a seq above every
   folded run, or in a gap between runs) go into per-device buckets of
   ``bucket_s`` seconds, one per kind and model version, by the report's own
   time (:class:`Fold` says how each figure folds). At most ``batch_size``
   reports per transaction: lock the device as ingest does
   (:func:`registry.ingest.lock_devices`), read its unfolded reports, add them
   to their buckets, add their seqs to ``folded_ranges``, commit. The raw rows
   stay, so the buckets lag by one interval at most and a chart over months
   reads buckets only.
2. **Expire raw reports** that arrived more than ``raw_days`` ago, in batches:
   lock their devices, ``DELETE ... RETURNING`` them, fold any returned report
   that step 1 has not (one that arrived since), commit.
3. **Expire buckets** that started more than ``aggregate_days`` ago, and
   events older than that, in batches.

Why a crash neither loses nor double-counts: a report is folded exactly when
its seq enters ``folded_ranges``, in the transaction that adds it to its
bucket (and, in step 2, deletes its row). A crash rolls back the batch in
hand, so its reports are still unfolded and still stored and the next run
folds them once; earlier batches are committed whole. The device lock makes
two replicas' jobs, and ingest, take turns on a device.

Why a late redelivery is still a duplicate once its raw row is gone: ingest
reads ``folded_ranges`` under the same lock and ignores a folded seq. A late
report that fills a gap (a seq never stored) is new: stored, then folded. A
device that keeps leaving gaps would grow its runs without bound, so past
``MAX_RUNS`` the oldest gaps are closed, once the device is caught up (no
unfolded report is left in them): a report arriving in a closed gap counts
as a duplicate.

Times: ages of raw reports are measured by arrival (the registry's clock), so
a device with a wrong clock cannot have its raw reports deleted early;
buckets are placed by the report's ``ts``, but never after its arrival.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import ColumnElement, delete, or_, select, true
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from registry._time import as_utc, utcnow
from registry.core.db import SessionFactory
from registry.ingest import lock_devices
from registry.periodic import Periodic
from registry.tables import Device, Event, FoldedRange, Message, SeriesBucket

__all__ = [
    "FIELDS",
    "MAX_RUNS",
    "RULES",
    "BucketPoint",
    "Fold",
    "Retention",
    "RetentionPolicy",
    "RetentionReport",
    "expire_raw",
    "figures",
    "fold_device",
    "read_buckets",
]

logger = logging.getLogger(__name__)

#: Most folded seq runs kept per device; beyond, the oldest gaps are closed.
MAX_RUNS = 64


class RetentionPolicy(BaseModel):
    """How long reports are kept (``CORRAL_RETENTION__<FIELD>`` to override one)."""

    #: Raw reports are deleted this many days after they arrived. At least a day:
    #: alert rules, rollout gates and the console's short charts read raw reports.
    raw_days: float = Field(default=7.0, ge=1.0)
    #: Bucket figures (and events) are deleted this many days after their time.
    aggregate_days: float = Field(default=400.0, ge=1.0)
    #: Bucket width in seconds; a whole number of buckets fills a day.
    bucket_s: int = Field(default=3600, ge=60, le=86400)
    #: Seconds between runs of the job.
    interval_s: float = Field(default=300.0, gt=0)
    #: Most reports (or buckets, or events) per transaction.
    batch_size: int = Field(default=2000, ge=1)
    #: Off: nothing is folded or deleted (the history route still reads buckets).
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if 86400 % self.bucket_s:
            raise ValueError(f"bucket_s must divide a day (86400 s) evenly, got {self.bucket_s}")
        if self.aggregate_days < self.raw_days:
            raise ValueError(
                f"aggregate_days ({self.aggregate_days}) must be at least raw_days "
                f"({self.raw_days}): buckets outlive the reports they fold"
            )
        return self


# -- Figures: the numbers a report carries, and how a bucket folds them ------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _most(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _gpu_memory_percent(gpu: dict[str, Any]) -> float | None:
    used, total = _num(gpu.get("memory_used_mb")), _num(gpu.get("memory_total_mb"))
    return 100.0 * used / total if used is not None and total else None


def _telemetry(body: dict[str, Any]) -> dict[str, float | None]:
    gpus = body.get("gpus")
    gpus = [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []
    power = [p for g in gpus if (p := _num(g.get("power_w"))) is not None]
    return {
        "cpu_percent": _num(body.get("cpu_percent")),
        "memory_percent": _num(body.get("memory_percent")),
        "disk_percent": _num(body.get("disk_percent")),
        "gpu_temp_c": _most(_num(g.get("temp_c")) for g in gpus),
        "gpu_util_percent": _most(_num(g.get("util_percent")) for g in gpus),
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
        "fps": _num(body.get("fps")),
        "p50_ms": _num(latency.get("p50")),
        "p95_ms": _num(latency.get("p95")),
        "p99_ms": _num(latency.get("p99")),
        "frames": _num(body.get("frames")),
        "drops": _num(body.get("drops")),
        "errors": _num(body.get("errors")),
        "queue_depth": _num(body.get("queue_depth")),
    }


def _accuracy(body: dict[str, Any]) -> dict[str, float | None]:
    return {
        "accuracy": _num(body.get("accuracy")),
        "labelled": _num(body.get("labelled")),
        "correct": _num(body.get("correct")),
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

_PER_CLASS_COUNTS = ("support", "predicted", "true_positives")


def figures(kind: str, payload: dict[str, Any]) -> dict[str, float | None]:
    """The numeric fields (:data:`FIELDS`) of one stored report of ``kind``."""
    return _EXTRACT[kind](payload)


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
            self.window_s += _num(payload.get("window_s")) or 0.0
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


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- Folding and expiring, one batch per transaction -------------------------------------

_Runs = list[tuple[int, int]]
_Key = tuple[str, datetime, str, str]


def _runs(session: Session, device_ids: Sequence[str]) -> dict[str, _Runs]:
    runs: dict[str, _Runs] = {d: [] for d in device_ids}
    rows = session.execute(
        select(FoldedRange.device_id, FoldedRange.first_seq, FoldedRange.last_seq)
        .where(FoldedRange.device_id.in_(device_ids))
        .order_by(FoldedRange.device_id, FoldedRange.first_seq)
    )
    for device_id, first, last in rows:
        runs[device_id].append((first, last))
    return runs


def _unfolded(runs: _Runs) -> ColumnElement[bool]:
    """Seqs outside every run: above the last, below the first, or in a gap."""
    if not runs:
        return true()
    gaps = [
        Message.seq.between(a_last + 1, b_first - 1)
        for (_, a_last), (b_first, _) in itertools.pairwise(runs)
    ]
    return or_(Message.seq > runs[-1][1], Message.seq < runs[0][0], *gaps)


def _merge_runs(runs: _Runs, seqs: Iterable[int]) -> _Runs:
    merged: _Runs = []
    for first, last in sorted(runs + [(s, s) for s in set(seqs)]):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _save_runs(session: Session, device_id: str, old: _Runs, new: _Runs) -> None:
    if new == old:
        return
    session.execute(delete(FoldedRange).where(FoldedRange.device_id == device_id))
    session.add_all(FoldedRange(device_id=device_id, first_seq=a, last_seq=b) for a, b in new)


def _bucket_start(ts: str, received: datetime, bucket_s: int) -> datetime:
    arrived = as_utc(received)
    try:
        when = min(as_utc(datetime.fromisoformat(ts.replace("Z", "+00:00"))), arrived)
    except ValueError:
        when = arrived  # ingest checked the envelope; an unreadable time files by arrival
    return datetime.fromtimestamp(math.floor(when.timestamp() / bucket_s) * bucket_s, UTC)


def _fold_rows(
    session: Session, device_id: str, rows: Sequence[Sequence[Any]], policy: RetentionPolicy,
    now: datetime,
) -> None:  # fmt: skip
    """Add ``rows`` (seq, kind, ts, received_at, payload) to the device's buckets."""
    oldest = now - timedelta(days=policy.aggregate_days)
    folds: dict[_Key, Fold] = {}
    for seq, kind, ts, received, payload in rows:
        if kind not in RULES or not isinstance(payload, dict):
            continue  # status and events carry no figures; their seqs still count as folded
        start = _bucket_start(ts, received, policy.bucket_s)
        if start < oldest:
            continue  # a bucket past its horizon would be deleted at once
        model = version = ""
        if kind != "telemetry":
            model = str(payload.get("model") or "")[:63]
            version = str(payload.get("version") or "")[:64]
        folds.setdefault((kind, start, model, version), Fold(kind)).add(seq, payload)
    if not folds:
        return
    stored = session.scalars(
        select(SeriesBucket).where(
            SeriesBucket.device_id == device_id,
            SeriesBucket.bucket_s == policy.bucket_s,
            SeriesBucket.kind.in_({k[0] for k in folds}),
            SeriesBucket.start.in_({k[1] for k in folds}),
        )
    )
    existing = {(b.kind, as_utc(b.start), b.model, b.version): b for b in stored}
    for key, fold in folds.items():
        row = existing.get(key)
        if row is None:
            row = SeriesBucket(
                device_id=device_id, kind=key[0], start=key[1], bucket_s=policy.bucket_s,
                model=key[2], version=key[3],
            )  # fmt: skip
            session.add(row)
        else:
            fold.merge(Fold.from_row(row))
        row.reports, row.last_seq, row.figures = fold.reports, fold.last_seq, fold.to_json()


def fold_device(session: Session, device_id: str, policy: RetentionPolicy, now: datetime) -> int:
    """Fold up to ``batch_size`` of a device's unfolded reports, in the caller's transaction.

    The caller commits (or, crashing, does not: then nothing happened).

    Args:
        session: a session that has not written yet.
        device_id: the device.
        policy: the retention settings.
        now: the current time (buckets past the aggregate horizon are not made).

    Returns:
        How many reports were folded; fewer than ``batch_size`` means none is left.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; roll back.
    """
    lock_devices(session, [device_id])
    runs = _runs(session, [device_id])[device_id]
    rows = session.execute(
        select(Message.seq, Message.kind, Message.ts, Message.received_at, Message.payload)
        .where(Message.device_id == device_id, _unfolded(runs))
        .order_by(Message.seq)
        .limit(policy.batch_size)
    ).all()
    if not rows:
        return 0
    _fold_rows(session, device_id, rows, policy, now)
    merged = _merge_runs(runs, (row.seq for row in rows))
    if len(rows) < policy.batch_size and len(merged) > MAX_RUNS:
        # Caught up, so no stored report is left in the gaps closed here.
        close = len(merged) - MAX_RUNS
        merged = [(merged[0][0], merged[close][1]), *merged[close + 1 :]]
    _save_runs(session, device_id, runs, merged)
    return len(rows)


def expire_raw(session: Session, policy: RetentionPolicy, now: datetime) -> int:
    """Delete up to ``batch_size`` raw reports past ``raw_days``, in the caller's transaction.

    A deleted report that was not folded yet is folded first, in the same
    transaction: what is deleted is exactly what ``DELETE ... RETURNING`` gave.

    Returns:
        How many reports were deleted; fewer than ``batch_size`` means none is left.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; roll back.
    """
    cutoff = now - timedelta(days=policy.raw_days)
    candidates = session.execute(
        select(Message.id, Message.device_id)
        .where(Message.received_at < cutoff)
        .order_by(Message.received_at)
        .limit(policy.batch_size)
    ).all()
    if not candidates:
        return 0
    devices = lock_devices(session, {device_id for _, device_id in candidates})
    runs = _runs(session, devices)
    deleted = session.execute(
        delete(Message)
        .where(Message.id.in_([message_id for message_id, _ in candidates]))
        .returning(
            Message.device_id,
            Message.seq,
            Message.kind,
            Message.ts,
            Message.received_at,
            Message.payload,
        ),  # fmt: skip
        execution_options={"synchronize_session": False},
    ).all()
    unfolded: dict[str, list[Sequence[Any]]] = {}
    for row in deleted:
        device_runs = runs[row.device_id]
        if not any(first <= row.seq <= last for first, last in device_runs):
            unfolded.setdefault(row.device_id, []).append(row[1:])
    for device_id, rows in unfolded.items():
        _fold_rows(session, device_id, rows, policy, now)
        merged = _merge_runs(runs[device_id], (row[0] for row in rows))
        _save_runs(session, device_id, runs[device_id], merged)
    return len(deleted)


def _expire(
    session: Session, table: type[SeriesBucket | Event], before: ColumnElement[bool], limit: int
) -> int:
    ids = session.scalars(select(table.id).where(before).limit(limit)).all()
    if ids:
        session.execute(delete(table).where(table.id.in_(ids)))
    return len(ids)


# -- Reading buckets back ----------------------------------------------------------------


@dataclass
class BucketPoint:
    """One point of a bucketed series."""

    start: datetime
    last_seq: int
    reports: int
    #: The model version, or None for telemetry or a bucket spanning versions.
    version: str | None
    values: dict[str, float | None]
    peaks: dict[str, float | None]


def read_buckets(
    session: Session, device_id: str, kind: str, since: datetime | None, width_s: int
) -> list[BucketPoint]:
    """A device's stored buckets of ``kind`` regrouped into ``width_s`` points, oldest first.

    Args:
        session: a session.
        device_id: the device.
        kind: ``inference``, ``accuracy`` or ``telemetry``.
        since: the first point's time (rounded down to ``width_s``), or None for all.
        width_s: the width of a point; stored buckets are grouped by their start.

    Returns:
        The points.
    """
    query = select(SeriesBucket).where(
        SeriesBucket.device_id == device_id, SeriesBucket.kind == kind
    )
    if since is not None:
        first = math.floor(as_utc(since).timestamp() / width_s) * width_s
        query = query.where(SeriesBucket.start >= datetime.fromtimestamp(first, UTC))
    groups: dict[int, tuple[Fold, set[str]]] = {}
    for row in session.scalars(query.order_by(SeriesBucket.start)):
        at = math.floor(as_utc(row.start).timestamp() / width_s) * width_s
        fold, versions = groups.setdefault(at, (Fold(kind), set()))
        fold.merge(Fold.from_row(row))
        versions.add(row.version)
    points = []
    for at, (fold, versions) in sorted(groups.items()):
        values, peaks = fold.point()
        only = next(iter(versions)) if len(versions) == 1 else ""
        points.append(
            BucketPoint(
                start=datetime.fromtimestamp(at, UTC),
                last_seq=fold.last_seq,
                reports=fold.reports,
                version=only or None,
                values=values,
                peaks=peaks,
            )  # fmt: skip
        )
    return points


# -- The job ----------------------------------------------------------------------------


@dataclass
class RetentionReport:
    """What one run did."""

    folded: int = 0
    expired_raw: int = 0
    expired_buckets: int = 0
    expired_events: int = 0
    #: Devices whose folding failed this run (logged; the next run retries).
    failed_devices: list[str] = field(default_factory=list)


class Retention:
    """The retention job (module docstring); ``run`` once, or ``start`` it every interval.

    Args:
        sessions: the database session factory.
        policy: the retention settings.
    """

    def __init__(self, sessions: SessionFactory, policy: RetentionPolicy) -> None:
        self._sessions = sessions
        self.policy = policy
        self._stopping = threading.Event()
        self._periodic = Periodic("retention", policy.interval_s, self.run)

    def start(self) -> None:
        """Run every ``interval_s`` on a thread (not at all when disabled)."""
        if self.policy.enabled:
            self._stopping.clear()
            self._periodic.start()

    def stop(self) -> None:
        """Stop after the batch in hand (each is its own transaction)."""
        self._stopping.set()
        self._periodic.stop()

    def run(self, now: datetime | None = None) -> RetentionReport:
        """Fold, then expire raw reports, buckets and events, each in batches.

        Args:
            now: the current time (tests pass a later one to age the data).

        Returns:
            What was done.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: expiring failed (that batch is rolled back).
        """
        now = as_utc(now) if now is not None else utcnow()
        policy = self.policy
        report = RetentionReport()
        with self._sessions() as session:
            device_ids = list(session.scalars(select(Device.id).order_by(Device.id)))
            runs = _runs(session, device_ids)
        for device_id in device_ids:
            if self._has_unfolded(device_id, runs[device_id]):
                report.folded += self._fold(device_id, now, report)
        report.expired_raw = self._repeat(lambda s: expire_raw(s, policy, now))
        oldest = now - timedelta(days=policy.aggregate_days)
        report.expired_buckets = self._repeat(
            lambda s: _expire(s, SeriesBucket, SeriesBucket.start < oldest, policy.batch_size)
        )
        # Events keep their payload's ts (ISO 8601 UTC), which sorts as text.
        before = oldest.strftime("%Y-%m-%dT%H:%M:%S")
        report.expired_events = self._repeat(
            lambda s: _expire(s, Event, Event.ts < before, policy.batch_size)
        )
        if report.folded or report.expired_raw or report.expired_buckets or report.expired_events:
            logger.info("retention: %s", report)
        return report

    def _has_unfolded(self, device_id: str, runs: _Runs) -> bool:
        # Without a lock: runs read earlier can only be fewer, so this never misses a report.
        with self._sessions() as session:
            query = select(Message.id).where(Message.device_id == device_id, _unfolded(runs))
            return session.scalar(query.limit(1)) is not None

    def _fold(self, device_id: str, now: datetime, report: RetentionReport) -> int:
        folded = 0
        while not self._stopping.is_set():
            try:
                with self._sessions() as session:
                    n = fold_device(session, device_id, self.policy, now)
                    session.commit()
            except SQLAlchemyError:
                # Rolled back whole; the next run retries. Other devices go on.
                logger.exception("retention could not fold device %s", device_id)
                report.failed_devices.append(device_id)
                break
            folded += n
            if n < self.policy.batch_size:
                break
        return folded

    def _repeat(self, batch: Callable[[Session], int]) -> int:
        done = 0
        while not self._stopping.is_set():
            with self._sessions() as session:
                n = batch(session)
                session.commit()
            done += n
            if n < self.policy.batch_size:
                break
        return done
