"""Staged rollouts: a plan, a state and a stage per rollout, a device's way there, a log.

Rollouts gain ``plan``, ``environment``, ``state``, ``verdict``,
``reason``, ``stage`` and its times, and ``gates``; rollout devices gain
their ``stage``, ``state``, previous version, move times and ``event_mark``;
``rollout_log`` is new. A rollout made by an older registry (every device
moved at once) becomes a finished one-stage rollout: ``succeeded``, its
devices ``converged`` with no previous version recorded (it was not).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the columns and the log table; old rollouts count as finished."""
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("created_by", sa.String(length=80), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("plan", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(
            sa.Column(
                "environment", sa.String(length=16), nullable=False, server_default="production"
            )
        )
        batch_op.add_column(
            sa.Column("state", sa.String(length=24), nullable=False, server_default="succeeded")
        )
        batch_op.add_column(
            sa.Column("verdict", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("stage", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("stage_started_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("stage_settled_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("gates", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.create_index(batch_op.f("ix_rollouts_state"), ["state"], unique=False)
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="converged")
        )
        batch_op.add_column(sa.Column("previous_model", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("previous_version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("event_mark", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "rollout_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_log_rollout_id_rollouts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_log")),
    )
    with op.batch_alter_table("rollout_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_log_rollout_id"), ["rollout_id"], unique=False)


def downgrade() -> None:
    """Drop the log table and the columns."""
    with op.batch_alter_table("rollout_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_log_rollout_id"))
    op.drop_table("rollout_log")
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        for column in (
            "reason",
            "event_mark",
            "settled_at",
            "moved_at",
            "previous_version",
            "previous_model",
            "state",
            "stage",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_state"))
        for column in (
            "gates",
            "finished_at",
            "updated_at",
            "stage_settled_at",
            "stage_started_at",
            "stage",
            "reason",
            "verdict",
            "state",
            "environment",
            "plan",
            "created_by",
        ):
            batch_op.drop_column(column)
