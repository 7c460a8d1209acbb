"""device_model: each device's reported models in columns (version, phase)

Revision ID: 0007
Revises: 0006
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "device_model",
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("phase", sqltypes.AutoString(length=16), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id", "model_name"),
    )
    op.create_index(op.f("ix_device_model_version"), "device_model", ["version"], unique=False)
    # What the devices reported before: from their stored state reports.
    rows = []
    for device_id, state in op.get_bind().execute(
        sa.text("SELECT id, state FROM device WHERE state IS NOT NULL")
    ):
        for model in json.loads(state).get("models", []):
            active = model.get("active")
            rows.append(
                {
                    "device_id": device_id,
                    "model_name": model["name"],
                    "version": active["version"] if active else None,
                    "phase": model["phase"],
                }
            )
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_index(op.f("ix_device_model_version"), table_name="device_model")
    op.drop_table("device_model")
