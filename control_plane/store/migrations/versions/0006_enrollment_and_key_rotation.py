"""device admission and broker accounts, bootstrap tokens, trust-store versions

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device") as batch:
        # Devices registered before admission existed were accepted by being registered.
        batch.add_column(
            sa.Column("admission", sa.String(length=16), nullable=False, server_default="accepted")
        )
        batch.add_column(
            sa.Column("broker_account", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "bootstrap_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token_hash", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("expires_at", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("auto_accept", sa.Boolean(), nullable=False),
        sa.Column("created_at", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_bootstrap_token_token_hash"), "bootstrap_token", ["token_hash"], unique=True
    )
    op.create_table(
        "trust_store_version",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )


def downgrade() -> None:
    op.drop_table("trust_store_version")
    op.drop_index(op.f("ix_bootstrap_token_token_hash"), table_name="bootstrap_token")
    op.drop_table("bootstrap_token")
    with op.batch_alter_table("device") as batch:
        batch.drop_column("broker_account")
        batch.drop_column("admission")
