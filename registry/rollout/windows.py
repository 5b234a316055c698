"""A rollout's windows: what its devices reported on the new version and before it.

The gates (``registry.rollout.gates``) and experiments judge a version on
these. For each device the rollout sent and that converged: reports of the
new version since it settled, and reports of its previous version from
``baseline_s`` before the first of them moved until it moved; telemetry
counts on both sides whatever the version. The bundle's drift baseline gives
the class prior the new version was trained on.

:func:`read_windows` reads them whole. The engine ticks every two seconds
through a soak that may last an hour, and reading every report again each
tick cost seconds at 500 devices (100,000 rows: 4.9 s), so it keeps a
:class:`WindowBook`: each rollout's windows, grown by the rows that arrived
since the last tick. A row is new if its id was not seen among those that
arrived within :data:`MARGIN` of the newest seen (rows commit in the order
they arrive to within far less than that), so only those ids are kept. The
book starts over whenever what a row counts towards could change: a device
leaves the converged set or its move changes, or the window's start moves
earlier.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from registry._time import as_utc
from registry.rollout import gates
from registry.rollout.plan import RolloutPlan
from registry.tables import Message, ModelVersion, Rollout, RolloutDevice

__all__ = ["MARGIN", "WindowBook", "read_windows"]

# (device_id, kind, received_at, payload) of a messages row.
_Row = tuple[str, str, datetime, dict[str, Any]]

#: How late a row may commit after newer ones and still be counted by a book.
MARGIN = timedelta(seconds=60)
_KINDS = ("inference", "accuracy", "telemetry")
_CHUNK = 500


def read_windows(
    session: Session, rollout: Rollout, moved: list[RolloutDevice]
) -> tuple[gates.Windows, gates.Windows, dict[str, float] | None]:
    """(new version's windows, old version's windows, the bundle's class prior or None).

    Args:
        session: a database session.
        rollout: the rollout.
        moved: its devices that were sent to its version.

    Returns:
        The two windows and the class prior.
    """
    new, old = gates.Windows(), gates.Windows()
    done = _done(moved)
    if done:
        since = _since(rollout, done)
        rows = session.execute(
            select(Message.device_id, Message.kind, Message.received_at, Message.payload).where(
                Message.device_id.in_(list(done)),
                Message.kind.in_(_KINDS),
                Message.received_at >= since,
            )
        ).all()
        for device_id, kind, received, payload in cast("list[_Row]", rows):
            _count(rollout, done[device_id], kind, as_utc(received), payload, new, old)
    return new, old, _prior(session, rollout)


def _done(moved: list[RolloutDevice]) -> dict[str, RolloutDevice]:
    return {rd.device_id: rd for rd in moved if rd.state == "converged" and rd.moved_at is not None}


def _since(rollout: Rollout, done: dict[str, RolloutDevice]) -> datetime:
    plan = RolloutPlan.model_validate(rollout.plan)
    earliest = min(as_utc(rd.moved_at) for rd in done.values() if rd.moved_at is not None)
    return earliest - timedelta(seconds=plan.gates.baseline_s)


def _count(
    rollout: Rollout,
    rd: RolloutDevice,
    kind: str,
    at: datetime,
    payload: dict[str, Any],
    new: gates.Windows,
    old: gates.Windows,
) -> None:
    """Add one report to the new version's windows, the old one's, or neither."""
    version = payload.get("version")
    if rd.settled_at is not None and at >= as_utc(rd.settled_at):
        if kind == "telemetry" or version == rollout.version:
            new.add(kind, payload)
    elif (
        rd.moved_at is not None
        and at < as_utc(rd.moved_at)
        and (kind == "telemetry" or version == rd.previous_version)
    ):
        old.add(kind, payload)


def _prior(session: Session, rollout: Rollout) -> dict[str, float] | None:
    bundle = session.scalar(
        select(ModelVersion.bundle).where(
            ModelVersion.name == rollout.model, ModelVersion.version == rollout.version
        )
    )
    prior = None
    if isinstance(bundle, dict):
        baseline = bundle.get("drift_baseline") or {}
        if isinstance(baseline.get("class_prior"), dict):
            prior = {str(k): float(v) for k, v in baseline["class_prior"].items()}
    return prior


# What a row of a device counts towards depends on these.
_Terms = tuple[datetime | None, datetime | None, str | None]


def _terms(rd: RolloutDevice) -> _Terms:
    return (
        None if rd.moved_at is None else as_utc(rd.moved_at),
        None if rd.settled_at is None else as_utc(rd.settled_at),
        rd.previous_version,
    )


@dataclass
class _Book:
    since: datetime
    terms: dict[str, _Terms] = field(default_factory=dict)
    new: gates.Windows = field(default_factory=gates.Windows)
    old: gates.Windows = field(default_factory=gates.Windows)
    #: Ids of rows that arrived within MARGIN of ``newest``, with their arrival.
    recent: dict[int, datetime] = field(default_factory=dict)
    newest: datetime | None = None


class WindowBook:
    """Each active rollout's windows, kept between ticks and grown by new rows (module doc).

    One per engine. A lock keeps two ticks at once (a test's and the engine
    thread's, on SQLite where ``SKIP LOCKED`` locks nothing) from mixing a book.
    """

    def __init__(self) -> None:
        self._books: dict[int, _Book] = {}
        self._lock = threading.Lock()

    def read(
        self, session: Session, rollout: Rollout, moved: list[RolloutDevice]
    ) -> tuple[gates.Windows, gates.Windows, dict[str, float] | None]:
        """What :func:`read_windows` returns, from the rows that arrived since the last read.

        The windows returned are the book's own: read them, do not change them.
        """
        with self._lock:
            return self._read(session, rollout, moved)

    def _read(
        self, session: Session, rollout: Rollout, moved: list[RolloutDevice]
    ) -> tuple[gates.Windows, gates.Windows, dict[str, float] | None]:
        done = _done(moved)
        if not done:
            self._books.pop(rollout.id, None)
            return gates.Windows(), gates.Windows(), _prior(session, rollout)
        since = _since(rollout, done)
        terms = {device_id: _terms(rd) for device_id, rd in done.items()}
        book = self._books.get(rollout.id)
        if (
            book is None
            or since < book.since
            or any(terms.get(d) != t for d, t in book.terms.items())
        ):
            book = self._books[rollout.id] = _Book(since)
        joining = [d for d in done if d not in book.terms]
        known = list(book.terms)
        if known and book.newest is not None:
            # Ids first (cheap), then the bodies of the rows not seen yet.
            arrived = session.execute(
                select(Message.id, Message.received_at).where(
                    Message.device_id.in_(known),
                    Message.kind.in_(_KINDS),
                    Message.received_at >= max(book.since, book.newest - MARGIN),
                )
            ).all()
            unseen = [row_id for row_id, _ in arrived if row_id not in book.recent]
            for start in range(0, len(unseen), _CHUNK):
                self._add(
                    session, rollout, done, book, Message.id.in_(unseen[start : start + _CHUNK])
                )
        if joining:
            self._add(
                session,
                rollout,
                done,
                book,
                Message.device_id.in_(joining) & (Message.received_at >= book.since),
            )
            book.terms.update((d, terms[d]) for d in joining)
        if book.newest is not None:
            horizon = book.newest - MARGIN
            book.recent = {i: at for i, at in book.recent.items() if at >= horizon}
        return book.new, book.old, _prior(session, rollout)

    def keep(self, rollout_ids: Iterable[int]) -> None:
        """Forget the books of every rollout not named (it is no longer active)."""
        wanted = set(rollout_ids)
        with self._lock:
            for rollout_id in list(self._books):
                if rollout_id not in wanted:
                    del self._books[rollout_id]

    @staticmethod
    def _add(
        session: Session,
        rollout: Rollout,
        done: dict[str, RolloutDevice],
        book: _Book,
        where: ColumnElement[bool],
    ) -> None:
        rows = session.execute(
            select(
                Message.id, Message.device_id, Message.kind, Message.received_at, Message.payload
            ).where(where, Message.kind.in_(_KINDS))
        ).all()
        for row_id, device_id, kind, received, payload in cast(
            "list[tuple[int, str, str, datetime, dict[str, Any]]]", rows
        ):
            if row_id in book.recent:
                continue
            at = as_utc(received)
            _count(rollout, done[device_id], kind, at, payload, book.new, book.old)
            book.recent[row_id] = at
            if book.newest is None or at > book.newest:
                book.newest = at
