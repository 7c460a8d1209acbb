"""The leader's lock connection on real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from control_plane.coordination.leadership import Leadership
from control_plane.store.db import create_db_engine, migrate

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_the_leader_holds_its_lock_without_holding_a_transaction(postgres_url: str) -> None:
    """A transaction left open on the lock's connection holds back the xmin horizon: no
    VACUUM could clean a row updated while this process leads."""
    engine = create_db_engine(postgres_url)
    migrate(engine)
    leadership = Leadership(engine)
    try:
        assert leadership.try_lead() and leadership.try_lead()  # the second checks the lock
        with engine.connect() as conn:
            states = conn.execute(
                text(
                    "SELECT state, backend_xmin FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        assert states and all(s == "idle" and xmin is None for s, xmin in states)
    finally:
        leadership.release()
        engine.dispose()
