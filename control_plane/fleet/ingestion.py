"""Ingest of device messages: parsed once at the MQTT edge, written in batches (one commit
per batch, not per message), idempotent on (device id, seq)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from control_plane.fleet.devices import apply_online, apply_state
from control_plane.store.tables import Device, SampleRecord, SampleRowRecord, TelemetryRecord
from shared.messages import DeviceState, OnlineStatus, SampleBatch, TelemetryWindow

Incoming = DeviceState | OnlineStatus | TelemetryWindow | SampleBatch


# How far a window's times may be from its receipt: a device's outbox holds windows while it
# is offline (weeks at most), and its clock may be somewhat off; 2099 or 1970 is not a window.
MAX_WINDOW_AGE = timedelta(days=365)
MAX_CLOCK_AHEAD = timedelta(days=1)


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
    """Why a window's times cannot be true, judged against its receipt; None if they can."""
    if window.window_end > received + MAX_CLOCK_AHEAD:
        return f"window ends at {window.window_end}, in the future"
    if window.window_start < received - MAX_WINDOW_AGE:
        return f"window starts at {window.window_start}, over a year ago"
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
    # Device rows in one order in every process (and locked, see apply_state): two
    # processes storing the same devices' reports wait for each other instead of deadlocking.
    reports = sorted(
        (m for m in messages if isinstance(m, DeviceState | OnlineStatus)),
        key=lambda m: m.device_id,
    )
    with Session(engine) as session:
        for message in reports:
            if isinstance(message, DeviceState):
                apply_state(session, message, now)
            else:
                apply_online(session, message.device_id, message.online, now)
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
    return _insert_once(
        session,
        TelemetryRecord,
        [
            {
                "device_id": w.device_id,
                "seq": w.seq,
                "window_start": w.window_start,
                "window_end": w.window_end,
                "payload": w.model_dump_json(),
                "received_at": now,
            }
            for w in windows
        ],
    )


def _insert_samples(session: Session, samples: list[SampleBatch], now: datetime) -> None:
    stored = _insert_once(
        session,
        SampleRecord,
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


def _insert_once(
    session: Session,
    model: type[TelemetryRecord] | type[SampleRecord],
    rows: list[dict[str, object]],
) -> set[tuple[str, int]]:
    """Insert, skipping (device_id, seq) pairs already stored; return the pairs inserted."""
    table = model.__table__  # type: ignore[union-attr]
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


def stored_windows(session: Session, device_id: str, limit: int = 1000) -> list[TelemetryRecord]:
    return list(
        session.exec(
            select(TelemetryRecord)
            .where(TelemetryRecord.device_id == device_id)
            .order_by(col(TelemetryRecord.seq))
            .limit(limit)
        ).all()
    )
