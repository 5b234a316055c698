"""A rollout's window book, grown tick by tick, says what a full read says.

The engine keeps each rollout's windows between ticks and reads only the rows
that arrived since (registry.rollout.windows). These cases play a rollout's
reports in as they would arrive, with devices converging along the way, one
moving before the others had, late rows, and a device's move changing, and
compare the book with a whole read after every step, on both databases.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import astuple
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from registry.core.db import SessionFactory, make_engine, make_session_factory, migrate
from registry.rollout import Windows
from registry.rollout.plan import RolloutPlan, Selector
from registry.rollout.windows import MARGIN, WindowBook, read_windows
from registry.tables import Device, Message, Rollout, RolloutDevice

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DEVICES = [f"win-{i}" for i in range(6)]


@pytest.fixture
def sessions(database_url: str) -> Iterator[SessionFactory]:
    engine: Engine = make_engine(database_url)
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _rollout(session: Session) -> Rollout:
    plan = RolloutPlan(model="m", version="2.0.0", selector=Selector(devices=DEVICES))
    rollout = Rollout(model="m", version="2.0.0", created_at=T0, plan=plan.model_dump(mode="json"))
    session.add(rollout)
    for device_id in DEVICES:
        session.add(Device(id=device_id, token_hash=device_id, enrolled_at=T0))
        rollout.devices.append(
            RolloutDevice(device_id=device_id, desired_seq=1, previous_version="1.0.0")
        )
    session.commit()
    return rollout


def _report(
    session: Session, device_id: str, at: datetime, version: str, kind: str | None = None
) -> None:
    seq = session.scalar(select(func.count()).where(Message.device_id == device_id)) or 0
    kind = kind or random.choice(("inference", "accuracy", "telemetry"))
    payload: dict[str, object] = {"version": version}
    if kind == "inference":
        payload |= {
            "frames": random.randint(1, 50),
            "errors": random.randint(0, 2),
            "fps": random.uniform(5, 30),
            "latency_ms": {"p95": random.uniform(1, 9)},
            "class_counts": {"cat": random.randint(0, 9), "dog": random.randint(0, 9)},
        }
    elif kind == "accuracy":
        payload |= {"labelled": 10, "correct": random.randint(5, 10)}
    else:
        payload |= {"gpus": [{"temp_c": random.uniform(40, 80), "throttle_reasons": []}]}
    session.add(
        Message(
            device_id=device_id, seq=seq + 1, kind=kind, ts=at.isoformat(), received_at=at,
            payload=payload,
        )
    )  # fmt: skip


def _same(book: Windows, whole: Windows) -> None:
    def key(w: Windows) -> tuple[object, ...]:
        fields = list(astuple(w))
        fields[3], fields[4] = sorted(w.fps), sorted(w.p95_ms)  # order of arrival aside
        return tuple(fields)

    assert key(book) == key(whole)


def test_the_book_grown_tick_by_tick_equals_a_whole_read(sessions: SessionFactory) -> None:
    random.seed(7)
    book = WindowBook()
    with sessions() as session:
        rollout = _rollout(session)
        by_id = {rd.device_id: rd for rd in rollout.devices}
        # Before the move: a baseline on the old version.
        for i in range(40):
            _report(session, random.choice(DEVICES), T0 + timedelta(seconds=i), "1.0.0")
        now = T0 + timedelta(seconds=60)
        # The devices move and converge one by one; win-5 was moved first of all
        # but converges last (the window's start moves earlier: a fresh book).
        order = ["win-5", "win-0", "win-1", "win-2", "win-3", "win-4"]
        for step, device_id in enumerate(order):
            rd = by_id[device_id]
            rd.state = "converged"
            rd.moved_at = now - timedelta(seconds=100 if device_id == "win-5" else 5)
            rd.settled_at = now
            for i in range(30):
                at = now + timedelta(seconds=i)
                who = random.choice(DEVICES)
                version = "2.0.0" if by_id[who].state == "converged" else "1.0.0"
                _report(session, who, at, version)
            session.commit()
            now += timedelta(seconds=30)
            moved = [rd for rd in rollout.devices if rd.state == "converged"]
            new, old, _ = book.read(session, rollout, moved)
            whole_new, whole_old, _ = read_windows(session, rollout, moved)
            _same(new, whole_new)
            _same(old, whole_old)
            assert whole_new.windows + whole_new.labelled > 0
            if step == 3:  # a row that commits after newer ones were read, within the margin
                _report(session, "win-0", now - MARGIN / 3, "2.0.0", "accuracy")
                session.commit()
                new, old, _ = book.read(session, rollout, moved)
                whole_new, whole_old, _ = read_windows(session, rollout, moved)
                _same(new, whole_new)
                _same(old, whole_old)
        assert whole_old.windows + whole_old.labelled > 0

        # A device's move changes (a second rollout of it): the book starts over.
        by_id["win-2"].settled_at = now
        for i in range(10):
            _report(session, "win-2", now + timedelta(seconds=i), "2.0.0")
        session.commit()
        moved = list(rollout.devices)
        new, old, _ = book.read(session, rollout, moved)
        whole_new, whole_old, _ = read_windows(session, rollout, moved)
        _same(new, whole_new)
        _same(old, whole_old)


def test_a_rollout_that_is_no_longer_active_is_forgotten(sessions: SessionFactory) -> None:
    book = WindowBook()
    with sessions() as session:
        rollout = _rollout(session)
        rd = rollout.devices[0]
        rd.state, rd.moved_at, rd.settled_at = "converged", T0, T0
        _report(session, rd.device_id, T0 + timedelta(seconds=1), "2.0.0")
        session.commit()
        first, _, _ = book.read(session, rollout, [rd])
        book.keep([])
        again, _, _ = book.read(session, rollout, [rd])
        assert again is not first  # read afresh, not carried over
        _same(again, first)
