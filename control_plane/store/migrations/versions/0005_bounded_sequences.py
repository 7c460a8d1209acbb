"""sequences as BIGINT, device report order, refused messages, the previous desired state,
the default a rolled-back rollout restores

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Sequences run up to 2^53 - 1 (what every JSON reader reads back exactly); PostgreSQL's
# INTEGER stops at 2^31 - 1, and one window past it used to fail a whole ingest batch.
BIGINT_COLUMNS = [
    ("device", "deployment_seq", False),
    ("telemetry_window", "seq", False),
    ("sample_batch", "seq", False),
    ("rollout_device", "assigned_seq", True),
]


def upgrade() -> None:
    for table, column, nullable in BIGINT_COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column,
                type_=sa.BigInteger(),
                existing_type=sa.Integer(),
                existing_nullable=nullable,
                server_default="0" if (table, column) == ("device", "deployment_seq") else None,
            )
    with op.batch_alter_table("device") as batch:
        batch.add_column(
            sa.Column("state_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("dropped_messages", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("previous_desired", sa.Text(), nullable=True))
    with op.batch_alter_table("rollout_device") as batch:
        batch.add_column(sa.Column("assigned_at", sqltypes.UTCDateTime(), nullable=True))
    with op.batch_alter_table("default_version") as batch:
        batch.add_column(sa.Column("previous_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("previous_rollout_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_device") as batch:
        batch.drop_column("assigned_at")
    with op.batch_alter_table("default_version") as batch:
        batch.drop_column("previous_rollout_id")
        batch.drop_column("previous_version")
    with op.batch_alter_table("device") as batch:
        batch.drop_column("previous_desired")
        batch.drop_column("dropped_messages")
        batch.drop_column("state_seq")
    for table, column, nullable in BIGINT_COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column,
                type_=sa.Integer(),
                existing_type=sa.BigInteger(),
                existing_nullable=nullable,
            )
