"""Alembic migrations of the registry's database, shipped inside the package.

``registry.core.db.migrate`` runs them programmatically at start-up; nothing
here reads an ``alembic.ini``. Revisions live in ``versions/``, one module
each, numbered ``NNNN_what.py`` with ``revision = "NNNN"``.
"""
