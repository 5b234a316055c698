"""A rollout's variant choice: ``devices.desired_variant``.

One nullable column: devices made before leave the variant to their profile.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``devices.desired_variant``."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("desired_variant", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("desired_variant")
