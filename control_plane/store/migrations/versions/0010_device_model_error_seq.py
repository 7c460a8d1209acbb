"""device_model.error_seq: which desired state a device's last refusal of a model concerns

Revision ID: 0010
Revises: 0009

A rollout counts its stage's installs and failures with one query on ``device_model``
instead of parsing every stage device's state report on every tick.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("device_model", sa.Column("error_seq", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    for device_id, state in bind.execute(
        sa.text("SELECT id, state FROM device WHERE state IS NOT NULL")
    ).all():
        for model in json.loads(state).get("models", []):
            error = model.get("last_error")
            if error is not None:
                bind.execute(
                    sa.text(
                        "UPDATE device_model SET error_seq = :seq "
                        "WHERE device_id = :device AND model_name = :model"
                    ),
                    {"seq": error.get("seq") or 0, "device": device_id, "model": model["name"]},
                )


def downgrade() -> None:
    op.drop_column("device_model", "error_seq")
