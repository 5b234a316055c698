"""The variant a device reports running: ``devices.variant``.

One nullable column: devices made before, and agents that do not report it,
leave it null (not known) until their next status says.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``devices.variant``."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("variant")
