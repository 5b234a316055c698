"""Shadow mode: ``shadow_trials``, and each device's shadow candidate.

A new table and two nullable columns on ``devices``: rows made before keep
running no candidate.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``shadow_trials``; add ``devices.shadow_model`` and ``shadow_version``."""
    op.create_table(
        "shadow_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("devices", sa.JSON(), server_default="[]", nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_by", sa.String(length=80), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_trials")),
        sa.UniqueConstraint("name", name=op.f("uq_shadow_trials_name")),
    )
    with op.batch_alter_table("shadow_trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shadow_trials_state"), ["state"], unique=False)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow_model", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("shadow_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("shadow_version")
        batch_op.drop_column("shadow_model")
    with op.batch_alter_table("shadow_trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shadow_trials_state"))
    op.drop_table("shadow_trials")
