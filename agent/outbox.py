"""A bounded on-disk outbox (SQLite): telemetry and sample messages wait here until the
control plane acknowledges that it stored them — a broker PUBACK is not enough, since
brokers keep sessions in memory. Beyond the cap the oldest are dropped and counted.
Sequence numbers are allocated here, so they survive restarts and only ever grow."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    channel TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (channel, seq));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxItem:
    channel: str
    seq: int
    payload: bytes


class Outbox:
    def __init__(self, path: Path, cap: int) -> None:
        self._cap = cap
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acked-by-us window must survive power loss
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) "
            "DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def append(self, channel: str, make: Callable[[int], bytes]) -> tuple[int, int]:
        """Allocate the next sequence number of ``channel`` (1, 2, …) and store the message
        ``make(seq)`` in one transaction, so no number is ever skipped or reused. Returns
        ``(seq, dropped)``: how many old messages were dropped to stay under the cap."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter(f"seq:{channel}") + 1
                self._set_counter(f"seq:{channel}", seq)
                self._db.execute(
                    "INSERT INTO outbox VALUES (?, ?, ?, ?)", (channel, seq, make(seq), time.time())
                )
                (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                excess = max(0, int(count) - self._cap)
                if excess:
                    self._db.execute(
                        "DELETE FROM outbox WHERE rowid IN (SELECT rowid FROM "
                        "outbox ORDER BY created, seq LIMIT ?)",
                        (excess,),
                    )
                    self._set_counter("dropped", self._counter("dropped") + excess)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return seq, excess

    def raise_seq(self, channel: str, floor: int) -> None:
        """Number the next message of ``channel`` above ``floor`` (what the control plane has
        already stored, e.g. before this data dir was wiped)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._counter(f"seq:{channel}") < floor:
                    self._set_counter(f"seq:{channel}", floor)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def next_boot(self, floor: int = 0) -> int:
        """A number above every earlier one (and above ``floor``): the agent's state reports
        are numbered within it, so they keep growing across restarts."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                boot = max(self._counter("boots"), floor) + 1
                self._set_counter("boots", boot)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return boot

    def last_seq(self, channel: str) -> int:
        with self._lock:
            return self._counter(f"seq:{channel}")

    def pending(
        self, limit: int = 1000, after: Mapping[str, int] | None = None
    ) -> list[OutboxItem]:
        """Oldest first; with ``after``, only messages numbered above ``after[channel]``."""
        floors = dict(after or {})
        where, params = "", []
        if floors:
            cases = " ".join("WHEN ? THEN ?" for _ in floors)
            where = f"WHERE seq > (CASE channel {cases} ELSE 0 END)"
            for channel, seq in floors.items():
                params += [channel, seq]
        with self._lock:
            rows = self._db.execute(
                f"SELECT channel, seq, payload FROM outbox {where} ORDER BY created, seq LIMIT ?",  # noqa: S608  (placeholders only)
                (*params, limit),
            ).fetchall()
        return [OutboxItem(str(c), int(s), bytes(p)) for c, s, p in rows]

    def ack(self, channel: str, seqs: Iterable[int]) -> int:
        """Remove acknowledged messages; return how many were removed."""
        values = [(channel, int(s)) for s in seqs]
        with self._lock:
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE channel = ? AND seq = ?", values)
            return self._db.total_changes - before

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._counter("dropped")
