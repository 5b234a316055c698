"""Alembic revisions, oldest first by number; each names its ``down_revision``."""
