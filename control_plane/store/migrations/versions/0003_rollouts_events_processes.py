"""rollouts, events, processes

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_plane_process",
        sa.Column("id", sqltypes.AutoString(length=32), nullable=False),
        sa.Column("host", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("control_plane_process", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_control_plane_process_heartbeat_at"), ["heartbeat_at"], unique=False
        )

    op.create_table(
        "default_version",
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("selector", sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sqltypes.AutoString(length=32), nullable=False),
        sa.Column("updated_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_name", "selector"),
    )
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("type", sqltypes.AutoString(length=32), nullable=False),
        sa.Column("rollout_id", sqltypes.AutoString(length=32), nullable=True),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_event_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_event_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_event_rollout_id"), ["rollout_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_event_type"), ["type"], unique=False)

    op.create_table(
        "rollout",
        sa.Column("id", sqltypes.AutoString(length=32), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("selector", sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("status", sqltypes.AutoString(length=16), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("stage_started_at", sqltypes.UTCDateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("created_by", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_model_name"), ["model_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollout_status"), ["status"], unique=False)

    op.create_table(
        "rollout_device",
        sa.Column("rollout_id", sqltypes.AutoString(length=32), nullable=False),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("assigned_stage", sa.Integer(), nullable=True),
        sa.Column("assigned_seq", sa.Integer(), nullable=True),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("reverted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollout.id"],
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sqltypes.AutoString(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_owner"))
        batch_op.drop_column("owner")

    op.drop_table("rollout_device")
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_status"))
        batch_op.drop_index(batch_op.f("ix_rollout_model_name"))

    op.drop_table("rollout")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_type"))
        batch_op.drop_index(batch_op.f("ix_event_rollout_id"))
        batch_op.drop_index(batch_op.f("ix_event_device_id"))
        batch_op.drop_index(batch_op.f("ix_event_at"))

    op.drop_table("event")
    op.drop_table("default_version")
    with op.batch_alter_table("control_plane_process", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_control_plane_process_heartbeat_at"))

    op.drop_table("control_plane_process")
