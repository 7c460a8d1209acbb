"""The audit log's events: one way to record them, each type with the payload it carries,
read back typed (real SQLite)."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session

from control_plane.audit.record import event_payload, record_event
from control_plane.audit.types import (
    PAYLOADS,
    AccuracyDropData,
    ChallengeData,
    DeviceModelData,
    DriftClearedData,
    DriftData,
    EventType,
    FeatureReading,
    Onset,
)
from control_plane.store.db import create_db_engine, migrate
from control_plane.store.tables import Event

ONSET = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    migrate(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def test_events_round_trip_with_their_payloads(session: Session) -> None:
    drift = DriftData(
        selector="site=berlin",
        onset=ONSET,
        bucket_end=ONSET,
        features=["temp"],
        prediction_drift=False,
        dataset_drift=False,
        readings={"temp": FeatureReading(psi=0.4, js=0.2, mean_shift=None)},
    )
    event = record_event(session, EventType.DRIFT, "drift", data=drift, model_name="m", version=1)
    record_event(session, EventType.CREATED, "created", rollout_id="r1")
    session.commit()
    stored = session.get(Event, event.id)
    assert stored is not None and stored.type == "drift"
    assert event_payload(stored, DriftData) == drift
    assert event_payload(stored, Onset).onset == ONSET  # the onset, whatever the verdict
    with pytest.raises(TypeError, match="does not carry"):
        event_payload(stored, AccuracyDropData)


@pytest.mark.parametrize("previous", [None, 3])
def test_a_payload_with_nulls_reads_back(session: Session, previous: int | None) -> None:
    """Payloads are stored without their null fields; those must read back as null."""
    data = DeviceModelData(previous=previous)
    event = record_event(session, EventType.DEVICE_MODEL, "m: v? → v4", data=data, version=4)
    session.commit()
    stored = session.get(Event, event.id)
    assert stored is not None and event_payload(stored, DeviceModelData) == data


def test_a_type_carries_its_payload_and_no_other(session: Session) -> None:
    with pytest.raises(TypeError, match="carries DriftData"):
        record_event(session, EventType.DRIFT, "no figures")
    with pytest.raises(TypeError, match="carries no payload"):
        record_event(
            session,
            EventType.CREATED,
            "figures where none belong",
            data=ChallengeData(decision="refused"),
        )
    with pytest.raises(TypeError, match="carries DriftClearedData"):
        record_event(
            session,
            EventType.DRIFT_CLEARED,
            "wrong figures",
            data=ChallengeData(decision="refused"),
        )
    assert DriftClearedData in PAYLOADS.values()
