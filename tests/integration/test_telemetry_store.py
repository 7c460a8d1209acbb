"""Telemetry stored as numbers on real SQLite and PostgreSQL (each driver's fast path): every
window once however often it arrives (in one batch or in several), read back exactly as it
arrived, the models of a window in their order, a window with no model kept too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from control_plane.fleet.ingestion import Incoming, store_batch, stored_windows
from control_plane.store.tables import TelemetryModelRecord, TelemetryRecord
from shared.messages import ModelWindow, TelemetryWindow
from tests.unit.test_windows import windows as model_windows

pytestmark = pytest.mark.integration
DEVICES = ["dev-a", "dev-b", "dev-c"]
START = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


SEQ = iter(range(1, 10**9))


@st.composite
def telemetry(draw: st.DrawFn) -> TelemetryWindow:
    models: list[ModelWindow] = draw(st.lists(model_windows(), max_size=3))
    start = START + timedelta(seconds=draw(st.integers(0, 86_400)))
    return TelemetryWindow(
        device_id=draw(st.sampled_from(DEVICES)),
        seq=next(SEQ),
        window_start=start,
        window_end=start + timedelta(seconds=draw(st.integers(0, 3600))),
        models=[m.model_copy(update={"name": f"m{i}"}) for i, m in enumerate(models)],
        outbox_dropped=draw(st.integers(0, 2**53 - 1)),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(telemetry(), min_size=1, max_size=12), data=st.data())
def test_windows_are_stored_once_and_read_back_exactly(
    engine: Engine, batch: list[TelemetryWindow], data: st.DataObject
) -> None:
    again = data.draw(st.lists(st.sampled_from(batch), max_size=5))  # redelivered
    first = store_batch(engine, list[Incoming]([*batch, *again]))
    second = store_batch(engine, list[Incoming](batch))
    assert (first.inserted, first.duplicates) == (len(batch), len(again))
    assert (second.inserted, second.duplicates) == (0, len(batch))
    acked = sorted(seq for seqs in first.acks.values() for seq in seqs)
    assert acked == sorted(w.seq for w in batch + again)  # duplicates are acknowledged too
    with Session(engine) as session:
        stored = {
            s.window.seq: s
            for device in DEVICES
            for s in stored_windows(session, device, 100_000)
            if s.window.seq in {w.seq for w in batch}
        }
        ids = select(TelemetryRecord.id).where(
            TelemetryRecord.seq.in_([w.seq for w in batch])  # type: ignore[attr-defined]
        )
        models = session.exec(
            select(func.count()).where(TelemetryModelRecord.window_id.in_(ids))  # type: ignore[attr-defined]
        ).one()
    assert models == sum(len(w.models) for w in batch)
    for window in batch:
        assert stored[window.seq].window == window
        assert stored[window.seq].window.model_dump_json() == window.model_dump_json()
