"""The alembic migrations create exactly the schema the models declare, on SQLite and
PostgreSQL, and running them twice is harmless."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel, select

import control_plane.store.tables  # noqa: F401
from control_plane.fleet.devices import matching_devices
from control_plane.fleet.ingestion import stored_windows
from control_plane.fleet.selectors import parse_selector
from control_plane.store.db import alembic_config, create_db_engine, migrate
from control_plane.store.tables import DeviceLabel
from shared.messages import TelemetryWindow
from tests.unit.test_wire_properties import DOCUMENTS

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'm.db'}"


def test_migrations_match_models(url: str) -> None:
    engine = create_db_engine(url)
    try:
        migrate(engine)
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_windows_stored_as_json_become_numbers_and_back(url: str) -> None:
    """0009 converts the windows stored before it (their JSON) into numbers that read back
    as the same windows, and its downgrade writes the same JSON back: nothing is lost."""
    engine = create_db_engine(url)
    config = alembic_config(engine)
    window = TelemetryWindow.model_validate_json(
        json.dumps(
            {**DOCUMENTS[TelemetryWindow], "device_id": "dev-old", "seq": 7, "outbox_dropped": 3}
        )
    )
    try:
        command.upgrade(config, "0008")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO telemetry_window (device_id, seq, window_start, window_end, "
                    "payload, received_at) VALUES ('dev-old', 7, :start, :end, :payload, :now)"
                ),
                {
                    "start": window.window_start,
                    "end": window.window_end,
                    "payload": window.model_dump_json(),
                    "now": datetime.now(UTC),
                },
            )
        command.upgrade(config, "head")
        with Session(engine) as session:
            [stored] = stored_windows(session, "dev-old")
        assert stored.window == window
        command.downgrade(config, "0008")
        with engine.connect() as conn:
            payload = conn.execute(text("SELECT payload FROM telemetry_window")).scalar_one()
        assert TelemetryWindow.model_validate_json(payload) == window
    finally:
        engine.dispose()


def test_labels_stored_before_0012_become_label_rows(url: str) -> None:
    """0012 copies each device's JSON labels into ``device_label`` (what selectors read),
    and its downgrade drops the copy: ``device.labels`` stays the source."""
    engine = create_db_engine(url)
    config = alembic_config(engine)
    labels = {"dev-a": {"site": "berlin", "hw": "rpi4"}, "dev-b": {}, "dev-c": {"ü": "O'Brien"}}
    try:
        command.upgrade(config, "0011")
        with engine.begin() as conn:
            for device_id, device_labels in labels.items():
                conn.execute(
                    text(
                        "INSERT INTO device (id, labels, registered, admission, broker_account,"
                        " online, state_seq, deployment_seq, dropped_messages, created_at)"
                        " VALUES (:id, :labels, true, 'accepted', false, false, 0, 0, 0, :now)"
                    ),
                    {
                        "id": device_id,
                        "labels": json.dumps(device_labels),
                        "now": datetime.now(UTC),
                    },
                )
        command.upgrade(config, "head")
        with Session(engine) as session:
            rows = session.exec(select(DeviceLabel.device_id, DeviceLabel.key, DeviceLabel.value))
            assert sorted(rows) == [
                ("dev-a", "hw", "rpi4"),
                ("dev-a", "site", "berlin"),
                ("dev-c", "ü", "O'Brien"),
            ]
            assert [d.id for d in matching_devices(session, parse_selector("site!=rome,hw"))] == [
                "dev-a"
            ]
        command.downgrade(config, "0011")
        assert "device_label" not in inspect(engine).get_table_names()
        command.upgrade(config, "head")
    finally:
        engine.dispose()
