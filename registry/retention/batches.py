"""Batches: one transaction's share of the retention job, in the caller's session.

Each function does at most ``batch_size`` rows and leaves the commit to the
caller, so a crash rolls back exactly the batch in hand. Folding and
expiring raw reports lock their devices as ingest does
(:func:`registry.ingest.lock_devices`), so the job on two replicas, and
ingest, take turns on a device; a report's bucket and its seq in
``folded_ranges`` are written together (:func:`_fold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from registry.folded_runs import (
    Runs,
    close_oldest_gaps,
    covers,
    merge_runs,
    read_runs,
    save_runs,
    unfolded,
)
from registry.ingest import lock_devices
from registry.retention.buckets import REPORT_COLUMNS, fold_rows
from registry.retention.policy import RetentionPolicy
from registry.tables import Event, Message, SeriesBucket

__all__ = ["expire_raw", "expire_rows", "fold_device"]


def _fold(
    session: Session, device_id: str, runs: Runs, rows: Sequence[Sequence[Any]],
    policy: RetentionPolicy, now: datetime, *, caught_up: bool,
) -> None:  # fmt: skip
    """Fold ``rows`` (:data:`REPORT_COLUMNS`) into their buckets and mark their seqs folded.

    Both in one transaction: that is what makes a report folded exactly once.
    ``caught_up`` (no unfolded report of the device is left) lets the oldest
    gaps close past :data:`registry.folded_runs.MAX_RUNS`.
    """
    fold_rows(session, device_id, rows, policy, now)
    merged = merge_runs(runs, (row[0] for row in rows))
    if caught_up:
        merged = close_oldest_gaps(merged)
    save_runs(session, device_id, runs, merged)


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
    runs = read_runs(session, [device_id])[device_id]
    rows = session.execute(
        select(*REPORT_COLUMNS)
        .where(Message.device_id == device_id, unfolded(runs))
        .order_by(Message.seq)
        .limit(policy.batch_size)
    ).all()
    if not rows:
        return 0
    _fold(session, device_id, runs, rows, policy, now, caught_up=len(rows) < policy.batch_size)
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
    candidates = session.execute(
        select(Message.id, Message.device_id)
        .where(Message.received_at < policy.raw_horizon(now))
        .order_by(Message.received_at)
        .limit(policy.batch_size)
    ).all()
    if not candidates:
        return 0
    devices = lock_devices(session, {device_id for _, device_id in candidates})
    runs = read_runs(session, devices)
    deleted = session.execute(
        delete(Message)
        .where(Message.id.in_([message_id for message_id, _ in candidates]))
        .returning(Message.device_id, *REPORT_COLUMNS),
        execution_options={"synchronize_session": False},
    ).all()
    unfolded_rows: dict[str, list[Sequence[Any]]] = {}
    for row in deleted:
        if not covers(runs[row.device_id], row.seq):
            unfolded_rows.setdefault(row.device_id, []).append(row[1:])
    for device_id, rows in unfolded_rows.items():
        _fold(session, device_id, runs[device_id], rows, policy, now, caught_up=False)
    return len(deleted)


def expire_rows(
    session: Session, table: type[SeriesBucket | Event], before: ColumnElement[bool], limit: int
) -> int:
    """Delete up to ``limit`` rows of ``table`` matching ``before``, in the caller's transaction.

    Returns:
        How many rows were deleted; fewer than ``limit`` means none is left.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; roll back.
    """
    ids = session.scalars(select(table.id).where(before).limit(limit)).all()
    if ids:
        session.execute(delete(table).where(table.id.in_(ids)))
    return len(ids)
