"""Governance: ``policy_actions``, what a policy did (or waits to do) about an alert.

A new table only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``policy_actions``."""
    op.create_table(
        "policy_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=80), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("log", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_policy_actions_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_actions")),
    )
    with op.batch_alter_table("policy_actions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_actions_policy"), ["policy"], unique=False)


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("policy_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_actions_policy"))
    op.drop_table("policy_actions")
