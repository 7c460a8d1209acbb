"""devices and telemetry

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device",
        sa.Column("id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen", sqltypes.UTCDateTime(), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("deployment_seq", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Text(), nullable=True),
        sa.Column("desired_expires_at", sqltypes.UTCDateTime(), nullable=True),
        sa.Column("created_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_desired_expires_at"), ["desired_expires_at"], unique=False
        )

    op.create_table(
        "sample_batch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "seq"),
    )
    with op.batch_alter_table("sample_batch", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sample_batch_device_id"), ["device_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sample_batch_model_name"), ["model_name"], unique=False
        )

    op.create_table(
        "telemetry_window",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("window_start", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("window_end", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "seq"),
    )
    with op.batch_alter_table("telemetry_window", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_telemetry_window_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_telemetry_window_window_end"), ["window_end"], unique=False
        )

    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_id", sqltypes.AutoString(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_token_device_id"), ["device_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_token_device_id"))
        batch_op.drop_column("device_id")

    with op.batch_alter_table("telemetry_window", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_window_window_end"))
        batch_op.drop_index(batch_op.f("ix_telemetry_window_device_id"))

    op.drop_table("telemetry_window")
    with op.batch_alter_table("sample_batch", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sample_batch_model_name"))
        batch_op.drop_index(batch_op.f("ix_sample_batch_device_id"))

    op.drop_table("sample_batch")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_desired_expires_at"))

    op.drop_table("device")
