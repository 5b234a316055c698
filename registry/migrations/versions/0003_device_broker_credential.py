"""Devices gain ``mqtt_password_hash``: their token in Mosquitto's format.

Enrolment fills it from then on (``registry.broker``). Devices enrolled
before keep NULL until they next call the API with their token, which fills
it; until then `corral registry broker-files` leaves them out and names them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the column."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mqtt_password_hash", sa.String(length=200), nullable=True))


def downgrade() -> None:
    """Drop it (devices then need their hashes again to reach a secured broker)."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("mqtt_password_hash")
