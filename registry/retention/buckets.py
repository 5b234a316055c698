"""Buckets: reports folded into ``series_buckets``, and read back as chart points.

A bucket holds one device's reports of one kind and model version whose time
falls in one ``bucket_s`` interval (counted from the epoch), as a
:class:`registry.retention.fold.Fold`. A report is placed by its own ``ts``,
but never after its arrival, so a device clock running ahead cannot file
reports in the future; an unreadable ``ts`` files by arrival.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry._time import as_utc
from registry.retention.fields import RULES
from registry.retention.fold import Fold
from registry.retention.policy import RetentionPolicy
from registry.tables import Message, SeriesBucket

__all__ = ["REPORT_COLUMNS", "BucketPoint", "fold_rows", "read_buckets"]

#: The columns of a stored report that :func:`fold_rows` takes, in its order.
REPORT_COLUMNS = (Message.seq, Message.kind, Message.ts, Message.received_at, Message.payload)

_Key = tuple[str, datetime, str, str]


def _floor(when: datetime, width_s: int) -> datetime:
    """The start of the ``width_s`` interval, counted from the epoch, that holds ``when``."""
    return datetime.fromtimestamp(math.floor(as_utc(when).timestamp() / width_s) * width_s, UTC)


def _bucket_start(ts: str, received: datetime, bucket_s: int) -> datetime:
    arrived = as_utc(received)
    try:
        when = min(as_utc(datetime.fromisoformat(ts.replace("Z", "+00:00"))), arrived)
    except ValueError:
        when = arrived  # ingest checked the envelope; an unreadable time files by arrival
    return _floor(when, bucket_s)


def fold_rows(
    session: Session, device_id: str, rows: Sequence[Sequence[Any]], policy: RetentionPolicy,
    now: datetime,
) -> None:  # fmt: skip
    """Add ``rows`` (:data:`REPORT_COLUMNS`) to the device's buckets, in the caller's transaction.

    Reports of a kind without figures are skipped (their seqs still count as
    folded), and so are those whose bucket is already past the aggregate
    horizon.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; roll back.
    """
    oldest = policy.aggregate_horizon(now)
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

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed.
    """
    query = select(SeriesBucket).where(
        SeriesBucket.device_id == device_id, SeriesBucket.kind == kind
    )
    if since is not None:
        query = query.where(SeriesBucket.start >= _floor(since, width_s))
    groups: dict[datetime, tuple[Fold, set[str]]] = {}
    for row in session.scalars(query.order_by(SeriesBucket.start)):
        fold, versions = groups.setdefault(_floor(row.start, width_s), (Fold(kind), set()))
        fold.merge(Fold.from_row(row))
        versions.add(row.version)
    points = []
    for start, (fold, versions) in sorted(groups.items()):
        values, peaks = fold.point()
        only = next(iter(versions)) if len(versions) == 1 else ""
        points.append(
            BucketPoint(
                start=start,
                last_seq=fold.last_seq,
                reports=fold.reports,
                version=only or None,
                values=values,
                peaks=peaks,
            )  # fmt: skip
        )
    return points
