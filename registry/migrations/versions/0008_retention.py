"""Retention (registry.retention): ``series_buckets``, ``folded_ranges``, and arrival-time index.

Two new tables and one new index on ``messages.received_at`` (retention deletes
raw reports by arrival age); no existing row changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the tables and the index."""
    op.create_table(
        "series_buckets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_s", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_series_buckets_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series_buckets")),
        sa.UniqueConstraint(
            *("device_id", "kind", "start", "bucket_s", "model", "version"),
            name="uq_series_buckets_key",
        ),
    )
    with op.batch_alter_table("series_buckets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_series_buckets_start"), ["start"], unique=False)
    op.create_table(
        "folded_ranges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_folded_ranges_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_folded_ranges")),
        sa.UniqueConstraint(
            "device_id", "first_seq", name=op.f("uq_folded_ranges_device_id_first_seq")
        ),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_received_at"), ["received_at"], unique=False)


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_received_at"))
    op.drop_table("folded_ranges")
    with op.batch_alter_table("series_buckets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_buckets_start"))
    op.drop_table("series_buckets")
