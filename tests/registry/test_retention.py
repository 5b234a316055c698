"""Retention: raw reports for days, per-bucket figures for months, exactly once.

Every test takes ``database_url`` (directly or through ``registry``) and so
runs on SQLite and on PostgreSQL. Reports go through the real ingest worker;
the job runs with a ``now`` days or months ahead to age them.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, MetaData, delete, func, insert, select

from corral.payloads import encode
from corral.topics import topic
from registry import Settings
from registry.core.db import SessionFactory, make_engine, make_session_factory, migrate
from registry.ingest import Ingest
from registry.mqtt import IncomingMessage
from registry.retention import (
    MAX_RUNS,
    Retention,
    RetentionPolicy,
    expire_raw,
    fold_device,
    read_buckets,
)
from registry.tables import Device, Event, FoldedRange, Message, SeriesBucket

NOW = datetime.now(UTC)
#: The start of an hour two days ago: the reports' own time.
HOUR = datetime.fromtimestamp(math.floor((NOW - timedelta(days=2)).timestamp() / 3600) * 3600, UTC)
POLICY = RetentionPolicy()


# -- Reports, built with the contract's encoder ------------------------------------------


def _at(minutes: float) -> str:
    return (HOUR + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def _message(
    device: str, kind: str, seq: int, minutes: float, body: dict[str, Any]
) -> IncomingMessage:
    return IncomingMessage(
        topic(device, kind), encode(kind, device, seq, body, ts=_at(minutes)), lambda: None
    )


def inference(
    device: str, seq: int, minutes: float, *, frames: int, p50: float, p95: float,
    drops: int = 0, classes: dict[str, int] | None = None, version: str = "1.0.0",
) -> IncomingMessage:  # fmt: skip
    body = {
        "window_s": 10.0, "frames": frames, "fps": frames / 10.0,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p95 + 1.0},
        "drops": drops, "errors": 0, "queue_depth": 1,
        "class_counts": classes if classes is not None else {"cat": frames},
        "model": "animals", "version": version,
    }  # fmt: skip
    return _message(device, "inference", seq, minutes, body)


def accuracy(device: str, seq: int, minutes: float, correct: int, labelled: int) -> IncomingMessage:
    body = {
        "window_s": 10.0, "labelled": labelled, "correct": correct,
        "accuracy": correct / labelled,
        "per_class": {
            "cat": {"support": labelled, "predicted": labelled, "true_positives": correct},
        },
        "model": "animals", "version": "1.0.0",
    }  # fmt: skip
    return _message(device, "accuracy", seq, minutes, body)


def telemetry(
    device: str, seq: int, minutes: float, cpu: float, gpu_temp: float
) -> IncomingMessage:
    body = {
        "cpu_percent": cpu, "memory_percent": 50.0, "disk_percent": 10.0,
        "gpus": [{"temp_c": gpu_temp, "util_percent": 80.0}],
    }  # fmt: skip
    return _message(device, "telemetry", seq, minutes, body)


def event(device: str, seq: int, minutes: float) -> IncomingMessage:
    body = {"event": "installed", "message": "installed animals 1.0.0", "version": "1.0.0"}
    return _message(device, "events", seq, minutes, body)


def day_of_reports(device: str) -> list[IncomingMessage]:
    """Seqs 1-12 over two hours: inference, accuracy, telemetry, an event, a status.

    The values are halves and whole numbers, so any order of addition gives the
    same sums to the bit: buckets folded in one go or in many batches compare equal.
    """
    return [
        inference(device, 1, 5, frames=100, p50=5.0, p95=8.0, drops=1,
                  classes={"cat": 60, "dog": 40}),
        inference(device, 2, 15, frames=300, p50=7.0, p95=12.0, drops=3,
                  classes={"cat": 100, "dog": 200}),
        accuracy(device, 3, 20, correct=9, labelled=10),
        accuracy(device, 4, 25, correct=15, labelled=30),
        telemetry(device, 5, 30, cpu=20.0, gpu_temp=60.0),
        telemetry(device, 6, 35, cpu=40.0, gpu_temp=70.0),
        event(device, 7, 40),
        _message(device, "status", 8, 41, {"state": "online", "model": "animals",
                                           "version": "1.0.0", "profile": "x86-cpu"}),
        inference(device, 9, 65, frames=200, p50=4.0, p95=6.0),
        inference(device, 10, 75, frames=200, p50=6.0, p95=9.5),
        telemetry(device, 11, 80, cpu=10.0, gpu_temp=50.0),
        accuracy(device, 12, 85, correct=1, labelled=2),
    ]  # fmt: skip


# -- Fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> SessionFactory:
    return make_session_factory(engine)


def enrol(sessions: SessionFactory, *device_ids: str) -> None:
    with sessions() as session:
        for device_id in device_ids:
            digest = hashlib.sha256(device_id.encode()).hexdigest()
            session.add(Device(id=device_id, token_hash=digest, enrolled_at=NOW))
        session.commit()


def ingest(sessions: SessionFactory, messages: list[IncomingMessage]) -> dict[str, int]:
    """Store through a real ingest worker; its counts (stored, duplicates, ...)."""
    worker = Ingest(sessions, batch_size=5)
    worker.start()
    for message in messages:
        worker.submit(message)
    worker.stop()
    return worker.counts


def buckets(sessions: SessionFactory, device: str) -> list[tuple[Any, ...]]:
    """The device's stored buckets, comparable across devices."""
    with sessions() as session:
        rows = session.scalars(
            select(SeriesBucket)
            .where(SeriesBucket.device_id == device)
            .order_by(SeriesBucket.kind, SeriesBucket.start, SeriesBucket.version)
        )
        return [
            (b.kind, b.start.replace(tzinfo=None), b.bucket_s, b.model, b.version, b.reports,
             b.last_seq, b.figures)
            for b in rows
        ]  # fmt: skip


def points(sessions: SessionFactory, device: str, kind: str) -> list[Any]:
    with sessions() as session:
        return read_buckets(session, device, kind, None, 3600)


def raw_count(sessions: SessionFactory, device: str) -> int:
    with sessions() as session:
        return (
            session.scalar(select(func.count(Message.id)).where(Message.device_id == device)) or 0
        )


def runs(sessions: SessionFactory, device: str) -> list[tuple[int, int]]:
    with sessions() as session:
        rows = session.execute(
            select(FoldedRange.first_seq, FoldedRange.last_seq)
            .where(FoldedRange.device_id == device)
            .order_by(FoldedRange.first_seq)
        )
        return [(a, b) for a, b in rows]


def summary(sessions: SessionFactory, device: str) -> tuple[int, int, int, int]:
    with sessions() as session:
        d = session.get(Device, device)
        assert d is not None
        return d.frames, d.drops, d.correct, d.labelled


# -- What a bucket holds -----------------------------------------------------------------


def test_reports_fold_into_hourly_buckets_with_exact_counts(sessions: SessionFactory) -> None:
    enrol(sessions, "cam-1")
    assert ingest(sessions, day_of_reports("cam-1"))["stored"] == 12
    report = Retention(sessions, POLICY).run(NOW)
    assert report.folded == 12 and report.expired_raw == 0
    assert raw_count(sessions, "cam-1") == 12, "raw reports stay for raw_days"
    assert runs(sessions, "cam-1") == [(1, 12)]

    first, second = points(sessions, "cam-1", "inference")
    assert (first.start, second.start) == (HOUR, HOUR + timedelta(hours=1))
    assert first.reports == 2 and first.last_seq == 2 and first.version == "1.0.0"
    # fps: 400 frames over 20 s; p50 weighted by frames; p95 and p99 the worst window's.
    assert first.values == {
        "fps": 20.0, "p50_ms": (5.0 * 100 + 7.0 * 300) / 400, "p95_ms": 12.0, "p99_ms": 13.0,
        "frames": 400.0, "drops": 4.0, "errors": 0.0, "queue_depth": 1.0,
    }  # fmt: skip
    assert first.peaks["fps"] == 30.0
    assert second.values["p95_ms"] == 9.5 and second.values["fps"] == 20.0

    acc_first, acc_second = points(sessions, "cam-1", "accuracy")
    # 24 correct of 40 labelled: 0.6, not the mean of the windows' 0.9 and 0.5.
    assert acc_first.values == {"accuracy": 0.6, "labelled": 40.0, "correct": 24.0}
    assert acc_second.values["accuracy"] == 0.5

    tele_first, _ = points(sessions, "cam-1", "telemetry")
    assert tele_first.values["cpu_percent"] == 30.0 and tele_first.peaks["cpu_percent"] == 40.0
    assert tele_first.values["gpu_temp_c"] == 65.0 and tele_first.peaks["gpu_temp_c"] == 70.0
    assert tele_first.version is None

    stored = {(b[0], b[1]): b[7] for b in buckets(sessions, "cam-1")}
    hour = HOUR.replace(tzinfo=None)
    assert stored[("inference", hour)]["classes"] == {"cat": 160, "dog": 240}
    assert stored[("accuracy", hour)]["per_class"] == {
        "cat": {"support": 40, "predicted": 40, "true_positives": 24}
    }


def test_a_bucket_keeps_versions_apart_and_a_chart_point_joins_them(
    sessions: SessionFactory,
) -> None:
    enrol(sessions, "cam-1")
    ingest(sessions, [
        inference("cam-1", 1, 5, frames=100, p50=5.0, p95=8.0, version="1.0.0"),
        inference("cam-1", 2, 50, frames=100, p50=5.0, p95=20.0, version="1.1.0"),
    ])  # fmt: skip
    Retention(sessions, POLICY).run(NOW)
    assert [(b[4], b[5]) for b in buckets(sessions, "cam-1")] == [("1.0.0", 1), ("1.1.0", 1)]
    (point,) = points(sessions, "cam-1", "inference")
    assert point.version is None and point.reports == 2 and point.values["p95_ms"] == 20.0


def test_folding_again_adds_only_new_reports(sessions: SessionFactory) -> None:
    enrol(sessions, "cam-1")
    reports = day_of_reports("cam-1")
    ingest(sessions, reports[:6])
    job = Retention(sessions, POLICY)
    job.run(NOW)
    assert job.run(NOW).folded == 0, "nothing new: nothing folded"
    ingest(sessions, reports[6:])
    assert job.run(NOW).folded == 6
    enrol(sessions, "cam-2")
    ingest(sessions, day_of_reports("cam-2"))
    job.run(NOW)
    assert buckets(sessions, "cam-1") == buckets(sessions, "cam-2")


# -- How long things are kept ------------------------------------------------------------


def test_raw_reports_go_after_raw_days_buckets_and_events_after_aggregate_days(
    sessions: SessionFactory,
) -> None:
    enrol(sessions, "cam-1")
    ingest(sessions, day_of_reports("cam-1"))
    job = Retention(sessions, POLICY)
    job.run(NOW)
    folded = buckets(sessions, "cam-1")

    assert job.run(NOW + timedelta(days=6.9)).expired_raw == 0
    assert job.run(NOW + timedelta(days=7.1)).expired_raw == 12
    assert raw_count(sessions, "cam-1") == 0
    assert buckets(sessions, "cam-1") == folded, "buckets outlive the raw reports"
    with sessions() as session:
        assert session.scalar(select(func.count(Event.id))) == 1, "events stay for months"

    # The buckets start two days before NOW: 400 days after that they go, events too.
    assert job.run(NOW + timedelta(days=397)).expired_buckets == 0
    late = job.run(NOW + timedelta(days=399))
    assert (late.expired_buckets, late.expired_events) == (len(folded), 1)
    assert buckets(sessions, "cam-1") == []


def test_the_settings_come_from_corral_retention_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_RETENTION__RAW_DAYS", "14")
    monkeypatch.setenv("CORRAL_RETENTION__AGGREGATE_DAYS", "730")
    monkeypatch.setenv("CORRAL_RETENTION__BUCKET_S", "900")
    monkeypatch.setenv("CORRAL_RETENTION__INTERVAL_S", "60")
    policy = Settings().retention
    assert (policy.raw_days, policy.aggregate_days, policy.bucket_s, policy.interval_s) == (
        14, 730, 900, 60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"raw_days": 0.5}, id="raw-under-a-day"),
        pytest.param({"raw_days": 30, "aggregate_days": 10}, id="buckets-shorter-than-raw"),
        pytest.param({"bucket_s": 7000}, id="bucket-does-not-divide-a-day"),
        pytest.param({"bucket_s": 30}, id="bucket-under-a-minute"),
        pytest.param({"batch_size": 0}, id="empty-batches"),
    ],
)
def test_unusable_retention_settings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetentionPolicy(**values)


# -- Exactly once: crashes, duplicates, gaps, replicas -----------------------------------


def test_a_crash_mid_batch_neither_loses_nor_double_counts(sessions: SessionFactory) -> None:
    """A batch that never commits leaves no trace; running again gives the same buckets."""
    enrol(sessions, "ref", "cam-1")
    ingest(sessions, day_of_reports("ref"))
    policy = RetentionPolicy(batch_size=3)
    Retention(sessions, policy).run(NOW + timedelta(days=8))  # ref: one clean run
    assert raw_count(sessions, "ref") == 0
    ingest(sessions, day_of_reports("cam-1"))

    with sessions() as session:
        # Fold two batches of cam-1...
        assert fold_device(session, "cam-1", policy, NOW) == 3
        session.commit()
        assert fold_device(session, "cam-1", policy, NOW) == 3
        session.commit()
    with sessions() as session:
        # ...then crash mid-batch: folded and bucketed, never committed.
        assert fold_device(session, "cam-1", policy, NOW) == 3
        session.flush()
    assert runs(sessions, "cam-1") == [(1, 6)]
    with sessions() as session:
        # And crash while deleting, past the raw horizon.
        assert expire_raw(session, policy, NOW + timedelta(days=8)) == 3
        session.flush()
    assert raw_count(sessions, "cam-1") == 12

    Retention(sessions, policy).run(NOW + timedelta(days=8))
    assert raw_count(sessions, "cam-1") == 0
    assert runs(sessions, "cam-1") == [(1, 12)]
    assert buckets(sessions, "cam-1") == buckets(sessions, "ref")


def test_reports_deleted_before_they_were_folded_are_folded_on_the_way_out(
    sessions: SessionFactory,
) -> None:
    enrol(sessions, "ref", "cam-1")
    ingest(sessions, day_of_reports("ref") + day_of_reports("cam-1"))
    Retention(sessions, POLICY).run(NOW)
    assert runs(sessions, "cam-1") == [(1, 12)]
    with sessions() as session:
        # As if cam-1 had reported after the last run: unfold it, then expire.
        session.execute(delete(FoldedRange).where(FoldedRange.device_id == "cam-1"))
        session.execute(delete(SeriesBucket).where(SeriesBucket.device_id == "cam-1"))
        session.commit()
    policy = RetentionPolicy(batch_size=5)
    with sessions() as session:
        while expire_raw(session, policy, NOW + timedelta(days=8)):
            session.commit()
        session.commit()
    assert raw_count(sessions, "cam-1") == 0 and raw_count(sessions, "ref") == 0
    assert runs(sessions, "cam-1") == [(1, 12)]
    assert buckets(sessions, "cam-1") == buckets(sessions, "ref")


def test_a_late_duplicate_of_a_deleted_report_is_not_stored_or_counted_again(
    sessions: SessionFactory,
) -> None:
    enrol(sessions, "cam-1")
    reports = day_of_reports("cam-1")
    ingest(sessions, reports)
    Retention(sessions, POLICY).run(NOW + timedelta(days=8))
    assert raw_count(sessions, "cam-1") == 0
    before = (summary(sessions, "cam-1"), buckets(sessions, "cam-1"))

    counts = ingest(sessions, [reports[1], reports[3], reports[11]])
    assert counts.get("duplicates") == 3 and "stored" not in counts, counts
    assert raw_count(sessions, "cam-1") == 0
    Retention(sessions, POLICY).run(NOW + timedelta(days=8))
    assert (summary(sessions, "cam-1"), buckets(sessions, "cam-1")) == before


def test_a_late_report_that_fills_a_gap_is_stored_and_folded_once(
    sessions: SessionFactory,
) -> None:
    enrol(sessions, "ref", "cam-1")
    ingest(sessions, day_of_reports("ref"))
    reports = day_of_reports("cam-1")
    late = reports[2]  # seq 3, an accuracy window
    ingest(sessions, [r for r in reports if r is not late])
    job = Retention(sessions, POLICY)
    job.run(NOW + timedelta(days=8))
    assert runs(sessions, "cam-1") == [(1, 2), (4, 12)]

    assert ingest(sessions, [late]) == {"received": 1, "stored": 1}
    job.run(NOW)
    assert runs(sessions, "cam-1") == [(1, 12)]
    assert buckets(sessions, "cam-1") == buckets(sessions, "ref")
    assert ingest(sessions, [late]).get("duplicates") == 1
    job.run(NOW + timedelta(days=8))
    assert raw_count(sessions, "cam-1") == 0
    assert buckets(sessions, "cam-1") == buckets(sessions, "ref")


def test_past_max_runs_the_oldest_gaps_close(sessions: SessionFactory) -> None:
    enrol(sessions, "cam-1")
    odd = [
        telemetry("cam-1", seq, 1, cpu=1.0, gpu_temp=1.0) for seq in range(1, 2 * MAX_RUNS + 10, 2)
    ]
    ingest(sessions, odd)  # every other seq lost: a gap after each report
    Retention(sessions, POLICY).run(NOW)
    kept = runs(sessions, "cam-1")
    assert len(kept) == MAX_RUNS
    assert kept[0][0] == 1 and kept[-1] == (2 * MAX_RUNS + 9, 2 * MAX_RUNS + 9)
    closed = telemetry("cam-1", 2, 1, cpu=1.0, gpu_temp=1.0)
    still_open = telemetry("cam-1", 2 * MAX_RUNS + 8, 1, cpu=1.0, gpu_temp=1.0)
    assert ingest(sessions, [closed, still_open]) == {"received": 2, "duplicates": 1, "stored": 1}


def test_two_replicas_jobs_at_once_fold_each_report_once(
    sessions: SessionFactory, database_url: str
) -> None:
    enrol(sessions, "ref", "cam-1", "cam-2")
    ingest(sessions, day_of_reports("ref"))
    Retention(sessions, POLICY).run(NOW)
    ingest(sessions, day_of_reports("cam-1") + day_of_reports("cam-2"))
    other = make_engine(database_url)
    policy = RetentionPolicy(batch_size=2)
    jobs = [Retention(s, policy) for s in (sessions, make_session_factory(other))]
    start = threading.Barrier(2)
    reports: list[Any] = []

    def run(job: Retention) -> None:
        start.wait()
        reports.append(job.run(NOW + timedelta(days=8)))

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.dispose()
    assert len(reports) == 2 and not any(r.failed_devices for r in reports), reports
    for device in ("cam-1", "cam-2"):
        assert raw_count(sessions, device) == 0
        assert buckets(sessions, device) == buckets(sessions, "ref")


def test_redeliveries_while_the_job_folds_and_deletes_are_never_stored_twice(
    sessions: SessionFactory, database_url: str
) -> None:
    enrol(sessions, "ref", "cam-1")
    ingest(sessions, day_of_reports("ref"))
    Retention(sessions, POLICY).run(NOW)
    reports = day_of_reports("cam-1")
    ingest(sessions, reports)
    before = summary(sessions, "cam-1")
    other = make_engine(database_url)
    worker = Ingest(make_session_factory(other), batch_size=3)
    job = Retention(sessions, RetentionPolicy(batch_size=2))
    running = threading.Thread(target=job.run, args=(NOW + timedelta(days=8),))
    worker.start()
    running.start()
    rounds = 0
    while running.is_alive() or rounds < 2:  # redeliver during the job, and twice after it
        rounds = rounds + 1 if not running.is_alive() else 0
        for message in reports:
            worker.submit(message)
        worker.stop()  # stores what is queued
        worker.start()
    running.join()
    worker.stop()
    other.dispose()
    assert "stored" not in worker.counts and worker.counts["duplicates"] >= 24, worker.counts
    job.run(NOW + timedelta(days=8))
    assert raw_count(sessions, "cam-1") == 0
    assert summary(sessions, "cam-1") == before
    assert buckets(sessions, "cam-1") == buckets(sessions, "ref")


# -- Upgrading a database made before retention ------------------------------------------


def test_a_database_at_0007_upgrades_keeping_its_reports_and_folds_them(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, "0007")
        tables = MetaData()
        tables.reflect(engine)
        payloads = [json.loads(m.payload) for m in day_of_reports("cam-1")]
        with engine.begin() as connection:
            connection.execute(
                insert(tables.tables["devices"]),
                [{"id": "cam-1", "token_hash": "a" * 64, "facts": {}, "enrolled_at": NOW,
                  "desired_seq": 0, "frames": 0, "drops": 0, "correct": 0, "labelled": 0,
                  "tags": []}],
            )  # fmt: skip
            connection.execute(
                insert(tables.tables["messages"]),
                [{"device_id": "cam-1", "seq": p["seq"], "kind": p["schema"][7:-2], "ts": p["ts"],
                  "received_at": NOW, "payload": p} for p in payloads],
            )  # fmt: skip
            connection.execute(
                insert(tables.tables["events"]),
                [{"device_id": "cam-1", "seq": 7, "ts": _at(40), "event": "installed",
                  "message": "m", "data": {}}],
            )  # fmt: skip
        migrate(engine)
        sessions = make_session_factory(engine)
        assert raw_count(sessions, "cam-1") == 12
        with sessions() as session:
            assert session.scalar(select(func.count(Event.id))) == 1
            assert session.scalar(select(func.count(SeriesBucket.id))) == 0
        assert Retention(sessions, POLICY).run(NOW).folded == 12
        assert [p.reports for p in points(sessions, "cam-1", "inference")] == [2, 2]
    finally:
        engine.dispose()


# -- The console's history ---------------------------------------------------------------


def _series(registry: Any, device: str, **params: Any) -> dict[str, Any]:
    answer = registry.admin.get(f"/api/v1/devices/{device}/series", params=params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_chart_reaching_past_the_raw_horizon_is_drawn_from_buckets(registry: Any) -> None:
    device = registry.enrol(registry.unique_id())["device_id"]
    old = [
        inference(device, seq, -28 * 24 * 60 + seq, frames=10 * seq, p50=1.0, p95=float(seq))
        for seq in range(1, 5)
    ]  # four windows four weeks ago
    recent = inference(device, 5, 5, frames=100, p50=5.0, p95=8.0)
    sessions = registry.context.sessions
    assert ingest(sessions, [*old, recent])["stored"] == 5
    job = Retention(sessions, registry.context.settings.retention)
    job.run()

    since = (NOW - timedelta(days=40)).isoformat()
    months = _series(registry, device, since=since, limit=2000)
    assert months["bucket_s"] == 3600 and months["truncated"] is False
    assert months["ts"] == [(HOUR - timedelta(days=28)).timestamp(), HOUR.timestamp()]
    assert months["reports"] == [4, 1] and months["seq"] == [4, 5]
    assert months["values"]["fps"] == [(10 + 20 + 30 + 40) / 40.0, 10.0]
    assert months["values"]["p95_ms"] == [4.0, 8.0] and months["peaks"]["fps"] == [4.0, 10.0]
    assert months["versions"] == ["1.0.0", "1.0.0"]

    raw = _series(registry, device)
    assert raw["bucket_s"] is None and raw["seq"] == [1, 2, 3, 4, 5]
    assert raw["reports"] == [1] * 5 and raw["peaks"] == {}

    daily = _series(registry, device, bucket_s=86400)
    assert daily["bucket_s"] == 86400 and daily["reports"] == [4, 1]
    # 39.5 days in at most 10 points: 4 days each, aligned to days.
    coarse = _series(registry, device, since=(NOW - timedelta(days=39.5)).isoformat(), limit=10)
    assert coarse["bucket_s"] == 4 * 86400 and coarse["reports"] == [4, 1]
    five_hours = _series(registry, device, bucket_s=5 * 3600)
    assert five_hours["bucket_s"] == 6 * 3600, "5 h does not divide a day: 6 h"

    # Raw reports gone past the horizon: the months chart is unchanged, the raw one empty.
    job.run(NOW + timedelta(days=8))
    assert _series(registry, device, since=since, limit=2000) == months
    assert _series(registry, device)["seq"] == []


@pytest.mark.parametrize("bucket_s", [0, 32 * 86400])
def test_a_bucket_wider_than_a_month_or_empty_is_refused(registry: Any, bucket_s: int) -> None:
    device = registry.enrol(registry.unique_id())["device_id"]
    answer = registry.admin.get(f"/api/v1/devices/{device}/series", params={"bucket_s": bucket_s})
    assert answer.status_code == 422


def test_a_narrower_bucket_than_stored_is_widened_to_the_stored_one(registry: Any) -> None:
    device = registry.enrol(registry.unique_id())["device_id"]
    answer = _series(registry, device, kind="telemetry", bucket_s=60)
    assert (answer["bucket_s"], answer["ts"], answer["truncated"]) == (3600, [], False)
