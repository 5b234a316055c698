"""Storage on SQLite and PostgreSQL: migrations match the tables, upgrades keep rows, ingest races.

Every test here takes ``database_url`` and so runs on both engines.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, func, insert, inspect, select, text

from corral.payloads import encode
from corral.topics import topic
from registry.core.db import (
    INITIAL_REVISION,
    alembic_config,
    make_engine,
    make_session_factory,
    migrate,
)
from registry.ingest import Ingest
from registry.mqtt import IncomingMessage
from registry.tables import Base, Device, Message

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_head_creates_exactly_the_tables_of_the_models(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "tables.py and the migrations differ; add a revision"
    migrate(engine)  # at head already: nothing to do, no error


def _fill_initial_schema(engine: Engine) -> None:
    """Rows in every table that has a foreign key or that later revisions alter."""
    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as connection:
        device = {
            "id": "cam-1", "token_hash": "a" * 64, "facts": {"cpu": "x86"}, "enrolled_at": NOW,
            "desired_seq": 3, "frames": 1200, "drops": 4, "correct": 9, "labelled": 10,
            "profile": "x86-cpu", "state": "online",
        }  # fmt: skip
        connection.execute(insert(tables.tables["devices"]), [device])
        connection.execute(
            insert(tables.tables["enrolment_tokens"]),
            [{"token_hash": "b" * 64, "created_at": NOW, "expires": NOW, "device_id": "cam-1"}],
        )
        connection.execute(
            insert(tables.tables["messages"]),
            [
                {"device_id": "cam-1", "seq": seq, "kind": "status", "ts": "2025-01-01T00:00:00Z",
                 "received_at": NOW, "payload": {"seq": seq}}
                for seq in (1, 2, 3)
            ],
        )  # fmt: skip
        connection.execute(
            insert(tables.tables["events"]),
            [{"device_id": "cam-1", "seq": 2, "ts": "t", "event": "installed", "message": "m",
              "data": {"version": "1.0.0"}}],
        )  # fmt: skip


def _check_rows_kept(engine: Engine) -> None:
    with make_session_factory(engine)() as session:
        device = session.get(Device, "cam-1")
        assert device is not None
        assert (device.facts, device.frames, device.labelled, device.state) == (
            {"cpu": "x86"}, 1200, 10, "online",
        )  # fmt: skip
        assert (device.tags, device.site, device.group, device.revoked_at) == ([], None, None, None)
        assert (device.variant, device.desired_variant) == (None, None)
        assert session.scalar(select(func.count(Message.id))) == 3
        assert session.execute(text("SELECT count(*) FROM events")).scalar_one() == 1
        assert session.execute(text("SELECT tags FROM enrolment_tokens")).scalar_one() in ([], "[]")


def test_initial_revision_upgrades_to_head_keeping_rows(engine: Engine) -> None:
    migrate(engine, INITIAL_REVISION)
    assert _revision(engine) == INITIAL_REVISION
    assert "api_tokens" not in inspect(engine).get_table_names()
    _fill_initial_schema(engine)
    migrate(engine)
    assert _revision(engine) != INITIAL_REVISION
    _check_rows_kept(engine)


def _downgrade(engine: Engine, revision: str) -> None:
    """Alembic's downgrade to ``revision``, as ``migrate`` runs upgrades (the registry has none)."""
    config = alembic_config()
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:  # batch mode copies tables, which enforced foreign keys refuse
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.downgrade(config, revision)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def test_every_revision_downgrades_and_upgrades_again_keeping_rows(engine: Engine) -> None:
    migrate(engine, INITIAL_REVISION)
    _fill_initial_schema(engine)
    migrate(engine)
    head = _revision(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE devices SET variant = 'trt-fp16-l4-trt10.3'"))
    _downgrade(engine, INITIAL_REVISION)
    assert _revision(engine) == INITIAL_REVISION
    assert "api_tokens" not in inspect(engine).get_table_names()
    assert "variant" not in {c["name"] for c in inspect(engine).get_columns("devices")}
    migrate(engine)
    assert _revision(engine) == head
    _check_rows_kept(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "after a round trip the tables differ from tables.py"


def test_a_database_made_before_migrations_is_adopted(engine: Engine) -> None:
    # What create_all made before Alembic: revision 0001's tables, no alembic_version.
    migrate(engine, INITIAL_REVISION)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
    _fill_initial_schema(engine)
    migrate(engine)
    _check_rows_kept(engine)


def _telemetry(device: str, seq: int) -> IncomingMessage:
    body = {"cpu_percent": 10.0, "memory_percent": 20.0, "disk_percent": 1.0, "gpus": []}
    return IncomingMessage(topic(device, "telemetry"), encode("telemetry", device, seq, body),
                           lambda: None)  # fmt: skip


def test_two_ingest_workers_store_each_seq_once(engine: Engine, database_url: str) -> None:
    """Two registries receiving the same redeliveries: the database keeps one row per seq."""
    migrate(engine)
    with make_session_factory(engine)() as session:
        session.add(Device(id="cam-1", token_hash="c" * 64, enrolled_at=NOW))
        session.commit()
    other = make_engine(database_url)
    workers = [Ingest(make_session_factory(e), batch_size=7) for e in (engine, other)]
    messages = [_telemetry("cam-1", seq) for seq in range(1, 61)]
    start = threading.Barrier(2)

    def feed(worker: Ingest) -> None:
        start.wait()
        for message in messages:
            worker.submit(message)

    for worker in workers:
        worker.start()
    feeders = [threading.Thread(target=feed, args=(w,)) for w in workers]
    for thread in feeders:
        thread.start()
    for thread in feeders:
        thread.join()
    for worker in workers:
        worker.stop()
    other.dispose()

    counts = [w.counts for w in workers]
    assert sum(c.get("stored", 0) for c in counts) == 60, counts
    assert sum(c.get("duplicates", 0) for c in counts) == 60, counts
    assert not any(k.startswith("dropped") for c in counts for k in c), counts
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count(Message.id))) == 60
