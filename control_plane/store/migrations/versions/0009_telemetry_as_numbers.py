"""telemetry_model: each window's per-model traffic as numbers; the window's JSON goes

Revision ID: 0009
Revises: 0008

The windows stored so far are converted (the layout of ``monitoring/windows.py``, written
out here so that this migration keeps meaning what it meant when the code moves on), then
``telemetry_window.payload`` is dropped. The downgrade writes the JSON back from the
numbers: nothing stored is lost either way.
"""

import json
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CHUNK = 1000
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "telemetry_window",
        sa.Column("outbox_dropped", sa.BigInteger(), server_default="0", nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":  # ids past 2^31 (SQLite's are 64-bit)
        op.alter_column("telemetry_window", "id", type_=sa.BigInteger())
        op.execute("ALTER SEQUENCE telemetry_window_id_seq AS bigint")
    table = op.create_table(
        "telemetry_model",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("window_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("window_end", sqltypes.UTCDateTime(), nullable=False),
        sa.Column("model_name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("shape", sa.LargeBinary(), nullable=False),
        sa.Column("counts", sa.LargeBinary(), nullable=False),
        sa.Column("moments", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["window_id"], ["telemetry_window.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_telemetry_model_window_id"), "telemetry_model", ["window_id"], unique=False
    )
    op.create_index("ix_telemetry_model_device_end", "telemetry_model", ["device_id", "window_end"])
    op.create_index(
        op.f("ix_telemetry_model_window_end"), "telemetry_model", ["window_end"], unique=False
    )
    bind = op.get_bind()
    last = 0
    while True:
        chunk = bind.execute(
            sa.text(
                "SELECT id, device_id, payload FROM telemetry_window "
                "WHERE id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": CHUNK},
        ).all()
        if not chunk:
            break
        rows = []
        for window_id, device_id, payload in chunk:
            window = json.loads(payload)
            window_end = datetime.fromisoformat(window["window_end"])
            if window.get("outbox_dropped"):
                bind.execute(
                    sa.text("UPDATE telemetry_window SET outbox_dropped = :n WHERE id = :id"),
                    {"n": window["outbox_dropped"], "id": window_id},
                )
            for position, model in enumerate(window.get("models", [])):
                rows.append(_encoded(window_id, position, device_id, window_end, model))
        if rows:
            op.bulk_insert(table, rows)
        last = chunk[-1][0]
    op.drop_column("telemetry_window", "payload")


def _encoded(
    window_id: int, position: int, device_id: str, window_end: datetime, model: dict[str, Any]
) -> dict[str, Any]:
    shape = [len(model["latency_counts"]), len(model["predictions"])]
    ints = [model["requests"], model["errors"], *model["latency_counts"], *model["predictions"]]
    floats: list[float] = []
    for f in model["features"]:
        shape.append(len(f["counts"]))
        ints.extend(f["counts"])
        ints.extend((f["below"], f["above"], f["missing"], f["n"]))
        floats.extend((f["sum"], f["sum_sq"]))
    return {
        "window_id": window_id,
        "position": position,
        "device_id": device_id,
        "window_end": window_end,
        "model_name": model["name"],
        "version": model["version"],
        "sha256": model["sha256"],
        "requests": model["requests"],
        "errors": model["errors"],
        "shape": np.asarray(shape, dtype="<i4").tobytes(),
        "counts": np.asarray(ints, dtype="<i8").tobytes(),
        "moments": np.asarray(floats, dtype="<f8").tobytes(),
    }


def downgrade() -> None:
    op.add_column("telemetry_window", sa.Column("payload", sa.Text(), nullable=True))
    bind = op.get_bind()
    windows = bind.execute(
        sa.text(
            "SELECT id, device_id, seq, window_start, window_end, outbox_dropped "
            "FROM telemetry_window"
        )
    ).all()
    for window_id, device_id, seq, start, end, dropped in windows:
        models = bind.execute(
            sa.text(
                "SELECT model_name, version, sha256, shape, counts, moments FROM "
                "telemetry_model WHERE window_id = :id ORDER BY position"
            ),
            {"id": window_id},
        ).all()
        payload = {
            "schema_version": 1,
            "device_id": device_id,
            "seq": seq,
            "window_start": _iso(start),
            "window_end": _iso(end),
            "models": [_decoded(*m) for m in models],
            "outbox_dropped": dropped,
        }
        bind.execute(
            sa.text("UPDATE telemetry_window SET payload = :p WHERE id = :id"),
            {"p": json.dumps(payload), "id": window_id},
        )
    op.drop_index(op.f("ix_telemetry_model_window_end"), table_name="telemetry_model")
    op.drop_index("ix_telemetry_model_device_end", table_name="telemetry_model")
    op.drop_index(op.f("ix_telemetry_model_window_id"), table_name="telemetry_model")
    op.drop_table("telemetry_model")
    op.drop_column("telemetry_window", "outbox_dropped")


def _iso(moment: datetime | str) -> str:
    if isinstance(moment, str):  # SQLite hands back text for a raw query
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _decoded(
    name: str, version: int, sha256: str, shape: bytes, counts: bytes, moments: bytes
) -> dict[str, Any]:
    sizes = np.frombuffer(shape, dtype="<i4").tolist()
    ints = np.frombuffer(counts, dtype="<i8").tolist()
    floats = np.frombuffer(moments, dtype="<f8").tolist()
    n_latency, n_predictions = sizes[0], sizes[1]
    at = 2 + n_latency + n_predictions
    features = []
    for j, k in enumerate(sizes[2:]):
        below, above, missing, n = ints[at + k : at + k + 4]
        features.append(
            {
                "counts": ints[at : at + k],
                "below": below,
                "above": above,
                "missing": missing,
                "n": n,
                "sum": floats[2 * j],
                "sum_sq": floats[2 * j + 1],
            }
        )
        at += k + 4
    return {
        "name": name,
        "version": version,
        "sha256": sha256,
        "requests": ints[0],
        "errors": ints[1],
        "latency_counts": ints[2 : 2 + n_latency],
        "features": features,
        "predictions": ints[2 + n_latency : 2 + n_latency + n_predictions],
    }
