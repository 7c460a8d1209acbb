"""device_label: each device's labels as rows, indexed by (key, value)

Revision ID: 0012
Revises: 0011

A label selector (``site=berlin,hw!=rpi3``) read every device's JSON labels: a page of
100,000 devices took ~250 ms to count. ``device.labels`` stays what the API answers; these
rows are a copy, written by every flush that writes it.
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BATCH = 10_000


def upgrade() -> None:
    table = op.create_table(
        "device_label",
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("key", sqltypes.AutoString(), nullable=False),
        sa.Column("value", sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "key"),
    )
    op.create_index(
        "ix_device_label_key_value", "device_label", ["key", "value", "device_id"], unique=False
    )
    # The labels stored before: from each device's JSON (text on SQLite, parsed on PostgreSQL).
    rows: list[dict[str, str]] = []
    devices = op.get_bind().execute(sa.text("SELECT id, labels FROM device")).all()
    for device_id, labels in devices:
        parsed = json.loads(labels) if isinstance(labels, str) else labels
        rows.extend({"device_id": device_id, "key": k, "value": v} for k, v in parsed.items())
        if len(rows) >= BATCH:
            op.bulk_insert(table, rows)
            rows = []
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_index("ix_device_label_key_value", table_name="device_label")
    op.drop_table("device_label")
