"""The retention job: fold reports into buckets, then delete what is past its horizon.

One job (:class:`Retention`, every ``interval_s``, on every replica) does, in order:

1. **Fold.** Each device's reports that are not folded yet (a seq above every
   folded run, or in a gap between runs) go into per-device buckets of
   ``bucket_s`` seconds, one per kind and model version, by the report's own
   time (:class:`registry.retention.fold.Fold` says how each figure folds).
   At most ``batch_size`` reports per transaction: lock the device as ingest
   does (:func:`registry.ingest.lock_devices`), read its unfolded reports, add
   them to their buckets, add their seqs to ``folded_ranges``, commit
   (:func:`registry.retention.batches.fold_device`). The raw rows stay, so the
   buckets lag by one interval at most and a chart over months reads buckets
   only.
2. **Expire raw reports** that arrived more than ``raw_days`` ago, in batches:
   lock their devices, ``DELETE ... RETURNING`` them, fold any returned report
   that step 1 has not (one that arrived since), commit
   (:func:`registry.retention.batches.expire_raw`).
3. **Expire buckets** that started more than ``aggregate_days`` ago, and
   events older than that, in batches.

Why a crash neither loses nor double-counts: a report is folded exactly when
its seq enters ``folded_ranges``, in the transaction that adds it to its
bucket (and, in step 2, deletes its row). A crash rolls back the batch in
hand, so its reports are still unfolded and still stored and the next run
folds them once; earlier batches are committed whole. The device lock makes
two replicas' jobs, and ingest, take turns on a device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from registry._time import as_utc, utcnow
from registry.core.db import SessionFactory
from registry.folded_runs import Runs, read_runs, unfolded
from registry.periodic import Periodic
from registry.retention.batches import expire_raw, expire_rows, fold_device
from registry.retention.policy import RetentionPolicy
from registry.tables import Device, Event, Message, SeriesBucket

__all__ = ["Retention", "RetentionReport"]

logger = logging.getLogger(__name__)


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
            runs = read_runs(session, device_ids)
        for device_id in device_ids:
            if self._has_unfolded(device_id, runs[device_id]):
                report.folded += self._fold(device_id, now, report)
        report.expired_raw = self._repeat(lambda s: expire_raw(s, policy, now))
        oldest = policy.aggregate_horizon(now)
        report.expired_buckets = self._repeat(
            lambda s: expire_rows(s, SeriesBucket, SeriesBucket.start < oldest, policy.batch_size)
        )
        # Events keep their payload's ts (ISO 8601 UTC), which sorts as text.
        before = oldest.strftime("%Y-%m-%dT%H:%M:%S")
        report.expired_events = self._repeat(
            lambda s: expire_rows(s, Event, Event.ts < before, policy.batch_size)
        )
        if report.folded or report.expired_raw or report.expired_buckets or report.expired_events:
            logger.info("retention: %s", report)
        return report

    def _has_unfolded(self, device_id: str, runs: Runs) -> bool:
        # Without a lock: runs read earlier can only be fewer, so this never misses a report.
        with self._sessions() as session:
            query = select(Message.id).where(Message.device_id == device_id, unfolded(runs))
            return session.scalar(query.limit(1)) is not None

    def _fold(self, device_id: str, now: datetime, report: RetentionReport) -> int:
        folded = 0
        try:
            for n in self._batches(lambda s: fold_device(s, device_id, self.policy, now)):
                folded += n
        except SQLAlchemyError:
            # Rolled back whole; the next run retries. Other devices go on.
            logger.exception("retention could not fold device %s", device_id)
            report.failed_devices.append(device_id)
        return folded

    def _repeat(self, batch: Callable[[Session], int]) -> int:
        return sum(self._batches(batch))

    def _batches(self, batch: Callable[[Session], int]) -> Iterator[int]:
        """Run ``batch`` in a transaction of its own, again while it fills ``batch_size``.

        Yields each committed batch's count; stops early when the job is stopping.
        """
        while not self._stopping.is_set():
            with self._sessions() as session:
                n = batch(session)
                session.commit()
            yield n
            if n < self.policy.batch_size:
                return
