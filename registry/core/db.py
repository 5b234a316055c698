"""The database engine and sessions.

SQLite (the one-machine default) runs in WAL mode so the console's reads do
not block MQTT ingest's writes, with ``check_same_thread`` off because
FastAPI's thread pool, the ingest worker and the TUF refresher share one
engine. Other engines (PostgreSQL) get the portable defaults.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from registry.tables import Base

__all__ = ["SessionFactory", "make_engine", "make_session_factory"]

SessionFactory = sessionmaker[Session]


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` and the tables it lacks.

    Args:
        url: a SQLAlchemy database URL.

    Returns:
        The engine.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be opened.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    # Schema migrations (Alembic) are a later issue; create_all only adds missing tables.
    Base.metadata.create_all(engine)
    return engine


def make_session_factory(engine: Engine) -> SessionFactory:
    """A session factory whose objects stay readable after commit.

    Args:
        engine: the engine from :func:`make_engine`.

    Returns:
        The factory.
    """
    return sessionmaker(engine, expire_on_commit=False)
