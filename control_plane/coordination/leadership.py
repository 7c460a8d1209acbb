"""Several control-plane processes may share one PostgreSQL: all serve the API and split
device messages, but exactly one — the leader — drives rollouts and recovers jobs.

The leader holds a PostgreSQL session-level advisory lock on a dedicated connection. When
its process dies (even ``kill -9``) the connection closes, PostgreSQL drops the lock, and
another process takes it on its next try (every tick, about a second). With SQLite there is
a single process, always the leader. Processes also heartbeat, so the leader can tell which
jobs belong to a dead process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from control_plane.store.tables import ControlPlaneProcess

log = logging.getLogger(__name__)
LOCK_KEY = 0x6564676566  # "edgef": the advisory lock every control plane contends for
STALE_AFTER = timedelta(seconds=30)


class Leadership:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.process_id = uuid.uuid4().hex
        self._connection: Connection | None = None
        self._sqlite = engine.dialect.name == "sqlite"

    @property
    def is_leader(self) -> bool:
        return self._sqlite or self._connection is not None

    def try_lead(self) -> bool:
        """Become (or stay) the leader if possible; True while this process leads."""
        if self._sqlite:
            return True
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                # Ended at once: a transaction left open here for the leader's life held
                # back PostgreSQL's xmin horizon, so VACUUM could clean no row updated
                # since (the device table grew 3x at 100,000 devices; count and OFFSET
                # read every dead row).
                self._connection.commit()
                return True
            except DBAPIError:
                log.warning("lost the leader connection; no longer leading")
                self._drop()
        connection = self.engine.connect()
        try:
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}
            ).scalar()
            connection.commit()
        except DBAPIError:
            connection.close()
            return False
        if not got:
            connection.close()
            return False
        self._connection = connection
        log.info("this control plane (%s) is now the leader", self.process_id[:8])
        return True

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()
            self._connection = None

    def release(self) -> None:
        self._drop()

    # --- heartbeats -----------------------------------------------------------------------

    def heartbeat(self) -> None:
        now = datetime.now(UTC)
        with Session(self.engine) as session:
            row = session.get(ControlPlaneProcess, self.process_id) or ControlPlaneProcess(
                id=self.process_id,
                host=socket.gethostname()[:64],
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
            )
            row.heartbeat_at = now
            session.add(row)
            session.commit()

    def live_processes(self, session: Session) -> set[str]:
        threshold = datetime.now(UTC) - STALE_AFTER
        return set(
            session.exec(
                select(ControlPlaneProcess.id).where(
                    col(ControlPlaneProcess.heartbeat_at) >= threshold
                )
            ).all()
        ) | {self.process_id}
