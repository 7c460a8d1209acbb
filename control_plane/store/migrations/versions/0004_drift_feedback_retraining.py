"""drift, feedback, retraining

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_result",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("selector", sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("bucket_start", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("bucket_end", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("p95_latency_us", sa.Float(), nullable=True),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        sa.Column("drifted_share", sa.Float(), nullable=False),
        sa.Column("drifted_features", sa.JSON(), nullable=False),
        sa.Column("dataset_drift", sa.Boolean(), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("f1_macro", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_name", "version", "selector", "bucket_start"),
    )
    with op.batch_alter_table("drift_result", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_drift_result_bucket_start"), ["bucket_start"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_drift_result_model_name"), ["model_name"], unique=False
        )

    op.create_table(
        "feedback",
        sa.Column("request_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=True),
        sa.Column("label", sa.Float(), nullable=False),
        sa.Column("prediction", sa.Float(), nullable=True),
        sa.Column("received_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_model_name"), ["model_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_received_at"), ["received_at"], unique=False)

    op.create_table(
        "monitor_state",
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("selector", sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("state", sa.JSON(), nullable=True),
        sa.Column("accuracy_streak", sa.Integer(), nullable=False),
        sa.Column("evaluated_until", sqltypes.UTCDateTime(), nullable=True),
        sa.Column("updated_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_name", "version", "selector"),
    )
    op.create_table(
        "retrain_state",
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("pending_event_id", sa.Integer(), nullable=True),
        sa.Column("pending_reason", sqltypes.AutoString(length=32), nullable=True),
        sa.Column("waiting_for", sa.Text(), nullable=True),
        sa.Column("last_started_at", sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_job_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("model_name"),
    )
    op.create_table(
        "sample_row",
        sa.Column("request_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.Float(), nullable=False),
        sa.Column("received_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("sample_row", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sample_row_model_name"), ["model_name"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sample_row_received_at"), ["received_at"], unique=False
        )

    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_name", sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cause_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("data", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_event_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_event_model_name"), ["model_name"], unique=False)

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("result", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("trigger_event_id", sa.Integer(), nullable=True))

    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=True))

    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("release", sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("rollout_id", sqltypes.AutoString(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_model_version_release"), ["release"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_version_release"))
        batch_op.drop_column("rollout_id")
        batch_op.drop_column("release")

    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("policy")

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("trigger_event_id")
        batch_op.drop_column("result")

    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_model_name"))
        batch_op.drop_index(batch_op.f("ix_event_job_id"))
        batch_op.drop_column("data")
        batch_op.drop_column("cause_id")
        batch_op.drop_column("job_id")
        batch_op.drop_column("version")
        batch_op.drop_column("model_name")

    with op.batch_alter_table("sample_row", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sample_row_received_at"))
        batch_op.drop_index(batch_op.f("ix_sample_row_model_name"))

    op.drop_table("sample_row")
    op.drop_table("retrain_state")
    op.drop_table("monitor_state")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_received_at"))
        batch_op.drop_index(batch_op.f("ix_feedback_model_name"))

    op.drop_table("feedback")
    with op.batch_alter_table("drift_result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_result_model_name"))
        batch_op.drop_index(batch_op.f("ix_drift_result_bucket_start"))

    op.drop_table("drift_result")
