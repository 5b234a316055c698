"""Folded runs: which of a device's seqs are in its buckets (``folded_ranges``).

Read by retention (:mod:`registry.retention`), which folds reports and writes
the runs, and by ingest (:mod:`registry.ingest`), which ignores a redelivered
report whose seq is folded though its raw row is gone.

A report is folded exactly when its seq enters one of its device's runs
(sorted, disjoint, inclusive ``(first, last)`` seqs), in the transaction
that adds it to its bucket; a seq outside every run is unfolded.

Why a late redelivery is still a duplicate once its raw row is gone: ingest
reads ``folded_ranges`` under the same device lock and ignores a folded seq.
A late report that fills a gap (a seq never stored) is new: stored, then
folded. A device that keeps leaving gaps would grow its runs without bound,
so past :data:`MAX_RUNS` the oldest gaps are closed, once the device is
caught up (no unfolded report is left in them): a report arriving in a
closed gap counts as a duplicate.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence

from sqlalchemy import ColumnElement, delete, or_, select, true
from sqlalchemy.orm import Session

from registry.tables import FoldedRange, Message

__all__ = [
    "MAX_RUNS",
    "Runs",
    "close_oldest_gaps",
    "covers",
    "merge_runs",
    "read_runs",
    "save_runs",
    "unfolded",
]

#: Most folded seq runs kept per device; beyond, the oldest gaps are closed.
MAX_RUNS = 64

Runs = list[tuple[int, int]]


def read_runs(session: Session, device_ids: Sequence[str]) -> dict[str, Runs]:
    """Each device's runs, sorted; an empty list for a device with none."""
    runs: dict[str, Runs] = {d: [] for d in device_ids}
    if not runs:
        return runs
    rows = session.execute(
        select(FoldedRange.device_id, FoldedRange.first_seq, FoldedRange.last_seq)
        .where(FoldedRange.device_id.in_(device_ids))
        .order_by(FoldedRange.device_id, FoldedRange.first_seq)
    )
    for device_id, first, last in rows:
        runs[device_id].append((first, last))
    return runs


def unfolded(runs: Runs) -> ColumnElement[bool]:
    """Seqs outside every run: above the last, below the first, or in a gap."""
    if not runs:
        return true()
    gaps = [
        Message.seq.between(a_last + 1, b_first - 1)
        for (_, a_last), (b_first, _) in itertools.pairwise(runs)
    ]
    return or_(Message.seq > runs[-1][1], Message.seq < runs[0][0], *gaps)


def covers(runs: Runs, seq: int) -> bool:
    """Whether ``seq`` is folded (lies in one of the sorted, disjoint ``runs``)."""
    at = bisect.bisect_right(runs, seq, key=lambda run: run[0]) - 1
    return at >= 0 and runs[at][0] <= seq <= runs[at][1]


def merge_runs(runs: Runs, seqs: Iterable[int]) -> Runs:
    """``runs`` with ``seqs`` added, adjacent and overlapping runs joined."""
    merged: Runs = []
    for first, last in sorted(runs + [(s, s) for s in set(seqs)]):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def close_oldest_gaps(runs: Runs) -> Runs:
    """``runs`` cut to :data:`MAX_RUNS` by closing the oldest gaps.

    Call it only when the device is caught up, so that no stored report is
    left in the gaps it closes.
    """
    if len(runs) <= MAX_RUNS:
        return runs
    close = len(runs) - MAX_RUNS
    return [(runs[0][0], runs[close][1]), *runs[close + 1 :]]


def save_runs(session: Session, device_id: str, old: Runs, new: Runs) -> None:
    """Replace the device's stored runs ``old`` with ``new`` (nothing if they are equal)."""
    if new == old:
        return
    session.execute(delete(FoldedRange).where(FoldedRange.device_id == device_id))
    session.add_all(FoldedRange(device_id=device_id, first_seq=a, last_seq=b) for a, b in new)
