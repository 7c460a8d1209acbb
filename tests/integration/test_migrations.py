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
from sqlalchemy import text
from sqlmodel import Session, SQLModel

import control_plane.store.tables  # noqa: F401
from control_plane.fleet.ingestion import stored_windows
from control_plane.store.db import alembic_config, create_db_engine, migrate
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
