"""Ingest of device messages: parsed once at the MQTT edge, written in batches (one commit
per batch, not per message), idempotent on (device id, seq)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from control_plane.fleet.devices import apply_reports
from control_plane.monitoring.windows import Encoded, decode, encode
from control_plane.store.tables import (
    Device,
    SampleRecord,
    SampleRowRecord,
    TelemetryModelRecord,
    TelemetryRecord,
    as_utc,
)
from shared.messages import (
    DeviceState,
    ModelWindow,
    OnlineStatus,
    SampleBatch,
    TelemetryWindow,
)

Incoming = DeviceState | OnlineStatus | TelemetryWindow | SampleBatch


# How far a window's times may be from its receipt: a device's outbox holds windows while it
# is offline (weeks at most), and its clock may be somewhat off; 2099 or 1970 is not a window.
MAX_WINDOW_AGE = timedelta(days=365)
MAX_CLOCK_AHEAD = timedelta(days=1)
# The most rows one model version may claim to have served per second of its window (an
# edge device serves thousands). With a window's length capped at 7 days, no window's
# count exceeds ~6.0e11 (2**39.2), so int64 sums over millions of windows (a stage's
# running sums, a monitor bucket) cannot wrap; and inputs being float32, no feature's
# sums can reach infinity.
MAX_ROWS_PER_SECOND = 1_000_000
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class BatchResult:
    acks: dict[str, list[int]] = field(default_factory=dict)  # device → telemetry seqs stored
    sample_acks: dict[str, list[int]] = field(default_factory=dict)  # device → sample seqs
    inserted: int = 0
    duplicates: int = 0

    def merge(self, other: BatchResult) -> BatchResult:
        for mine, theirs in ((self.acks, other.acks), (self.sample_acks, other.sample_acks)):
            for device_id, seqs in theirs.items():
                mine.setdefault(device_id, []).extend(seqs)
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        return self

    def refuse(self, message: Incoming) -> BatchResult:
        """Acknowledge a message that is dropped: its device stops sending it."""
        if isinstance(message, TelemetryWindow):
            self.acks.setdefault(message.device_id, []).append(message.seq)
        elif isinstance(message, SampleBatch):
            self.sample_acks.setdefault(message.device_id, []).append(message.seq)
        return self


def implausible(window: TelemetryWindow, received: datetime) -> str | None:
    """Why a window cannot be true — its times judged against its receipt, its counts
    against its length and each other; None if it can."""
    if window.window_end > received + MAX_CLOCK_AHEAD:
        return f"window ends at {window.window_end}, in the future"
    if window.window_start < received - MAX_WINDOW_AGE:
        return f"window starts at {window.window_start}, over a year ago"
    seconds = max((window.window_end - window.window_start).total_seconds(), 1.0)
    for model in window.models:
        if problem := _implausible_counts(model, int(seconds * MAX_ROWS_PER_SECOND)):
            return f"{model.name} v{model.version}: {problem}"
    return None


def _implausible_counts(model: ModelWindow, most: int) -> str | None:
    """Why a model's counts cannot be what one device served: more rows than the window's
    length allows (``most``), or a part larger than the whole it is part of."""
    if model.requests > most:
        return f"{model.requests} rows is over {most} for the window's length"
    served = model.requests - model.errors
    if served < 0:
        return f"{model.errors} errors in {model.requests} rows"
    if sum(model.latency_counts) > served or sum(model.predictions) > served:
        return f"more latencies or predictions than the {served} rows served"
    for j, feature in enumerate(model.features):
        if feature.n + feature.missing > served:
            return f"feature {j}: {feature.n + feature.missing} values in {served} rows"
        if sum(feature.counts) + feature.below + feature.above > feature.n:
            return f"feature {j}: more binned values than its {feature.n}"
        if abs(feature.sum) > feature.n * FLOAT32_MAX or not (
            0.0 <= feature.sum_sq <= feature.n * FLOAT32_MAX**2
        ):
            return f"feature {j}: sums beyond what {feature.n} float32 values add up to"
    return None


def database_answers(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def store_batch(
    engine: Engine, messages: list[Incoming], dropped: dict[str, int] | None = None
) -> BatchResult:
    """Write one batch in one transaction, and add ``dropped`` (device → messages refused
    at the edge) to the devices' counts; return what to acknowledge (after the commit)."""
    now = datetime.now(UTC)
    result = BatchResult()
    windows = [m for m in messages if isinstance(m, TelemetryWindow)]
    samples = [m for m in messages if isinstance(m, SampleBatch)]
    reports = [m for m in messages if isinstance(m, DeviceState | OnlineStatus)]
    with Session(engine) as session:
        if reports:
            apply_reports(session, reports, now)
        if windows:
            inserted = _insert_windows(session, windows, now)
            result.inserted, result.duplicates = len(inserted), len(windows) - len(inserted)
        if samples:
            _insert_samples(session, samples, now)
        for device_id, count in sorted((dropped or {}).items()):
            session.execute(
                update(Device)
                .where(col(Device.id) == device_id)
                .values(dropped_messages=Device.dropped_messages + count)
            )
        session.commit()
    for window in windows:
        result.acks.setdefault(window.device_id, []).append(window.seq)
    for batch in samples:
        result.sample_acks.setdefault(batch.device_id, []).append(batch.seq)
    return result


def _insert_windows(
    session: Session, windows: list[TelemetryWindow], now: datetime
) -> set[tuple[str, int]]:
    """Each window once (its header), and what each model served in it as numbers."""
    ids = _insert_headers(session, windows, now)
    inserted = set(ids)
    rows = []
    for w in windows:
        window_id = ids.pop((w.device_id, w.seq), None)
        if window_id is None:
            continue  # stored before (or earlier in this batch)
        end = w.window_end.astimezone(UTC)
        for position, model in enumerate(w.models):
            encoded = encode(model)
            rows.append(
                (
                    window_id,
                    position,
                    w.device_id,
                    end,
                    model.name,
                    model.version,
                    model.sha256,
                    model.requests,
                    model.errors,
                    encoded.shape,
                    encoded.counts,
                    encoded.moments,
                )
            )
    if rows:
        _insert_models(session, rows)
    return inserted


# Column names below are constants, never input.
HEADERS_PG = """
INSERT INTO telemetry_window
    (device_id, seq, window_start, window_end, outbox_dropped, received_at)
SELECT d, s, ws, we, o, %(now)s
FROM unnest(
    %(devices)s::varchar[], %(seqs)s::int8[], %(starts)s::timestamptz[],
    %(ends)s::timestamptz[], %(dropped)s::int8[]
) AS w(d, s, ws, we, o)
ON CONFLICT (device_id, seq) DO NOTHING
RETURNING id, device_id, seq
"""

HEADERS_SQLITE = (
    "INSERT INTO telemetry_window "
    "(device_id, seq, window_start, window_end, outbox_dropped, received_at) VALUES"
)
HEADERS_SQLITE_END = "ON CONFLICT (device_id, seq) DO NOTHING RETURNING id, device_id, seq"
SQLITE_ROWS = 5000  # 6 values each, within SQLite's 32,766 variables per statement


def _insert_headers(
    session: Session, windows: list[TelemetryWindow], now: datetime
) -> dict[tuple[str, int], int]:
    """Insert the windows' headers, skipping (device_id, seq) pairs already stored; return
    the id of each one inserted (RETURNING says what was really inserted)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        returned = _headers_postgres(connection, windows, now)
    else:
        returned = _headers_sqlite(connection, windows, now)
    return {(device_id, seq): window_id for window_id, device_id, seq in returned}


def _headers_postgres(
    connection: Connection, windows: list[TelemetryWindow], now: datetime
) -> list[tuple[int, str, int]]:
    """Five arrays in one statement: no per-row statement text to build or parse."""
    driver: Any = connection.connection.driver_connection
    with driver.cursor() as cursor:
        cursor.execute(
            HEADERS_PG,
            {
                "now": now,
                "devices": [w.device_id for w in windows],
                "seqs": [w.seq for w in windows],
                "starts": [w.window_start for w in windows],
                "ends": [w.window_end for w in windows],
                "dropped": [w.outbox_dropped for w in windows],
            },
        )
        return list(cursor.fetchall())


def _headers_sqlite(
    connection: Connection, windows: list[TelemetryWindow], now: datetime
) -> list[tuple[int, str, int]]:
    """Multi-row INSERTs with the values already as the columns store them (SQLAlchemy's
    own multi-row insert spends more on its bind processing than SQLite on the insert)."""
    table = TelemetryRecord.__table__  # type: ignore[attr-defined]
    to_db = table.c.window_end.type.bind_processor(connection.dialect)
    received = to_db(now)
    returned: list[tuple[int, str, int]] = []
    for at in range(0, len(windows), SQLITE_ROWS):
        chunk = windows[at : at + SQLITE_ROWS]
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
        returned += connection.exec_driver_sql(
            f"{HEADERS_SQLITE} {values} {HEADERS_SQLITE_END}",
            tuple(
                value
                for w in chunk
                for value in (
                    w.device_id,
                    w.seq,
                    to_db(w.window_start),
                    to_db(w.window_end),
                    w.outbox_dropped,
                    received,
                )
            ),
        ).all()
    return returned


MODEL_COLUMNS = (
    "window_id",
    "position",
    "device_id",
    "window_end",
    "model_name",
    "version",
    "sha256",
    "requests",
    "errors",
    "shape",
    "counts",
    "moments",
)


COPY_MODELS = f"COPY telemetry_model ({', '.join(MODEL_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
MODEL_TYPES = (
    "int8", "int4", "varchar", "timestamptz", "varchar", "int4", "varchar",
    "int8", "int8", "bytea", "bytea", "bytea",
)  # fmt: skip
INSERT_MODELS = (
    f"INSERT INTO telemetry_model ({', '.join(MODEL_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(MODEL_COLUMNS))})"
)


def _insert_models(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """The rows of ``telemetry_model``, on the driver's fast path: PostgreSQL's COPY, one
    ``executemany`` on SQLite (the values are already what the columns hold)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        driver: Any = connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(COPY_MODELS) as copy:
            copy.set_types(MODEL_TYPES)
            for row in rows:
                copy.write_row(row)
        return
    table = TelemetryModelRecord.__table__  # type: ignore[attr-defined]
    to_db = table.c.window_end.type.bind_processor(connection.dialect)
    connection.exec_driver_sql(INSERT_MODELS, [(*row[:3], to_db(row[3]), *row[4:]) for row in rows])


def _insert_samples(session: Session, samples: list[SampleBatch], now: datetime) -> None:
    stored = _insert_once(
        session,
        [
            {
                "device_id": b.device_id,
                "seq": b.seq,
                "model_name": b.model.name,
                "model_version": b.model.version,
                "rows": len(b.rows),
                "payload": b.model_dump_json(),
                "received_at": now,
            }
            for b in samples
        ],
    )
    _insert_sample_rows(session, [b for b in samples if (b.device_id, b.seq) in stored], now)


def _insert_once(session: Session, rows: list[dict[str, object]]) -> set[tuple[str, int]]:
    """Insert sample batches, skipping (device_id, seq) pairs already stored; return the
    pairs inserted."""
    table = SampleRecord.__table__  # type: ignore[attr-defined]
    statement = _insert_ignoring(session, table, ["device_id", "seq"])
    # RETURNING says what was really inserted (executemany rowcount is unreliable: psycopg
    # reports none for ON CONFLICT DO NOTHING batches).
    returned = session.execute(statement.returning(table.c.device_id, table.c.seq), rows)
    return {(d, s) for d, s in returned.all()}


def _insert_ignoring(session: Session, table: Any, keys: list[str]) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)


def _insert_sample_rows(session: Session, batches: list[SampleBatch], now: datetime) -> None:
    """One row per sampled prediction, so feedback can be joined to it by request id (a
    request id seen before keeps its first row)."""
    rows = [
        {
            "request_id": row.request_id,
            "device_id": batch.device_id,
            "model_name": batch.model.name,
            "model_version": batch.model.version,
            "features": row.features,
            "prediction": float(row.prediction),
            "received_at": now,
        }
        for batch in batches
        for row in batch.rows
    ]
    if rows:
        table = SampleRowRecord.__table__  # type: ignore[attr-defined]
        session.execute(_insert_ignoring(session, table, ["request_id"]), rows)


@dataclass(frozen=True)
class StoredWindow:
    received_at: datetime
    window: TelemetryWindow


def stored_windows(session: Session, device_id: str, limit: int = 1000) -> list[StoredWindow]:
    """A device's stored windows by sequence, rebuilt from their numbers (exactly the
    windows that arrived)."""
    headers = session.exec(
        select(TelemetryRecord)
        .where(TelemetryRecord.device_id == device_id)
        .order_by(col(TelemetryRecord.seq))
        .limit(limit)
    ).all()
    models: dict[int, list[ModelWindow]] = {}
    for record in session.exec(
        select(TelemetryModelRecord)
        .where(col(TelemetryModelRecord.window_id).in_([h.id for h in headers]))
        .order_by(col(TelemetryModelRecord.window_id), col(TelemetryModelRecord.position))
    ).all():
        stored = Encoded(shape=record.shape, counts=record.counts, moments=record.moments)
        models.setdefault(record.window_id, []).append(
            decode(record.model_name, record.version, record.sha256, stored)
        )
    return [
        StoredWindow(
            received_at=h.received_at,
            window=TelemetryWindow(
                device_id=h.device_id,
                seq=h.seq,
                window_start=as_utc(h.window_start),
                window_end=as_utc(h.window_end),
                models=models.get(h.id or 0, []),
                outbox_dropped=h.outbox_dropped,
            ),
        )
        for h in headers
    ]
