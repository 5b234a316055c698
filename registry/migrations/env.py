"""Alembic's environment: run revisions on the connection ``migrate`` hands over.

Only the online mode exists: the registry always migrates a live database,
inside the transaction that ``registry.core.db.migrate`` opened. SQLite gets
batch mode (copy-and-move tables), since it cannot ALTER most column changes.
"""

from __future__ import annotations

from alembic import context

from registry.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "registry migrations run through registry.core.db.migrate(engine), "
        "not the alembic command line"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
