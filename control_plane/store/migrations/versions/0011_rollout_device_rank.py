"""rollout_device: an index on (rollout_id, rank); device: an index on online

Revision ID: 0011
Revises: 0010

A stage's cohort is a range of ranks listed in rank order: without the index, a page of a
100,000-device rollout's cohort sorted every member (225 ms on SQLite). The fleet summary
counts online devices: without an index, by reading every device's row (states and desired
states, kilobytes each).
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rollout_device_rank", "rollout_device", ["rollout_id", "rank"])
    op.create_index(op.f("ix_device_online"), "device", ["online"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_device_online"), table_name="device")
    op.drop_index("ix_rollout_device_rank", table_name="rollout_device")
