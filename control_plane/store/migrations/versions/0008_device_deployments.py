"""device_deployment: what each device's desired state says of each model, in columns

Revision ID: 0008
Revises: 0007
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "device_deployment",
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sqltypes.AutoString(length=32), nullable=True),
        sa.Column("stage", sqltypes.AutoString(length=64), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id", "model_name"),
    )
    op.create_index(
        op.f("ix_device_deployment_rollout_id"), "device_deployment", ["rollout_id"], unique=False
    )
    # From the desired states stored so far.
    rows = []
    for device_id, desired in op.get_bind().execute(
        sa.text("SELECT id, desired FROM device WHERE desired IS NOT NULL")
    ):
        for model in json.loads(desired).get("models", []):
            rows.append(
                {
                    "device_id": device_id,
                    "model_name": model["manifest"]["name"],
                    "version": model["manifest"]["version"],
                    "rollout_id": model.get("rollout_id"),
                    "stage": model.get("stage"),
                }
            )
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_index(op.f("ix_device_deployment_rollout_id"), table_name="device_deployment")
    op.drop_table("device_deployment")
