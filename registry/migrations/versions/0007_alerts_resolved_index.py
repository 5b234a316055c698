"""An index on ``alerts.resolved_at``: every evaluation and the console ask for open alerts."""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the index."""
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_resolved_at"), ["resolved_at"], unique=False)


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_resolved_at"))
