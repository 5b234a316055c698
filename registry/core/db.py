"""The database engine, its schema migrations, and sessions.

SQLite (the one-machine default) runs in WAL mode so the console's reads do
not block MQTT ingest's writes, with ``check_same_thread`` off because
FastAPI's thread pool, the ingest worker and the TUF refresher share one
engine. PostgreSQL (``CORRAL_DATABASE_URL=postgresql+psycopg://...``) gets
the portable defaults and ``pool_pre_ping``.

The schema is Alembic's: :func:`migrate` upgrades the database to the newest
revision shipped in ``registry/migrations`` before the registry serves. A
database that a registry from before migrations made with ``create_all`` (its
tables but no ``alembic_version``) is taken to be the initial revision and
upgraded from there.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "INITIAL_REVISION",
    "WORKER_CONNECTIONS",
    "SessionFactory",
    "alembic_config",
    "make_engine",
    "make_session_factory",
    "migrate",
]

SessionFactory = sessionmaker[Session]

#: Connections the registry keeps for itself beyond its admitted requests'
#: (registry.api.admission): the ingest worker, the rollout, alert, governance,
#: retention and TUF threads, the console's event streams.
WORKER_CONNECTIONS = 12

#: The revision that creates the schema registries had before migrations.
INITIAL_REVISION = "0001"


def make_engine(url: str, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """Create the engine for ``url`` (it does not touch the schema; see :func:`migrate`).

    Args:
        url: a SQLAlchemy database URL.
        pool_size: connections kept open (SQLAlchemy's default 5; the registry
            passes one per admitted request, registry.api.admission).
        max_overflow: connections opened beyond ``pool_size`` when all are in use.

    Returns:
        The engine.

    Raises:
        sqlalchemy.exc.ArgumentError: the URL cannot be parsed.
        ModuleNotFoundError: the URL's driver is not installed.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=max_overflow,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)


def alembic_config() -> Config:
    """Alembic's configuration for the shipped migrations (no alembic.ini).

    Returns:
        The config; put a connection in ``attributes["connection"]`` before use.
    """
    config = Config()
    config.set_main_option("script_location", str(resources.files("registry") / "migrations"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``, in one transaction.

    Args:
        engine: the engine from :func:`make_engine`.
        revision: the target; tests pass an older one to build old databases.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be opened or a
            revision fails (the transaction is rolled back where DDL is
            transactional, as on PostgreSQL); IntegrityError when a SQLite
            migration left rows whose foreign keys point nowhere.
        alembic.util.CommandError: the database is at a revision this registry
            does not know (a newer registry migrated it); run that registry.
    """
    config = alembic_config()
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # Batch mode copies a table and drops the old one, which enforced foreign
            # keys would refuse; the pragma only takes effect outside a transaction.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                tables = set(inspect(connection).get_table_names())
                if "alembic_version" not in tables and "devices" in tables:
                    # Made by create_all before migrations existed: that is revision 0001.
                    command.stamp(config, INITIAL_REVISION)
                command.upgrade(config, revision)
                if sqlite and (
                    rows := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                ):
                    raise IntegrityError("PRAGMA foreign_key_check", None, ValueError(rows))
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def make_session_factory(engine: Engine) -> SessionFactory:
    """A session factory whose objects stay readable after commit.

    Args:
        engine: the engine from :func:`make_engine`.

    Returns:
        The factory.
    """
    return sessionmaker(engine, expire_on_commit=False)
