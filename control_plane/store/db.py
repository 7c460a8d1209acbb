"""Engine creation and schema migrations (alembic, run on start)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, Table, and_, bindparam, create_engine, event, text, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, SQLModel

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The API runs sync routes on a 40-thread pool: let most of them hold a connection at once.
POOL_SIZE = 10
POOL_OVERFLOW = 30
# What a write meets while another transaction holds what it needs; tried again, it passes.
_SQLITE_BUSY = ("database is locked", "database table is locked")
_POSTGRES_CONTENDED = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and foreign keys, because the
    API process and training workers write to the same file."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)


def refresh_statistics(session: Session, *tables: str) -> None:
    """Have PostgreSQL sample ``tables`` now (SQLite: nothing), after a bulk write. Until
    autovacuum gets to it, a table filled at once has no statistics, and the planner takes
    every condition for one row: a label-selector page of 100,000 devices took 42-65 s
    through a nested loop, 4 ms once analyzed."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ANALYZE {', '.join(tables)}"))
        session.commit()


def contended(exc: BaseException) -> bool:
    """Whether a failed statement met another transaction's locks (SQLite's busy timeout
    ran out, a PostgreSQL deadlock or serialization failure), not a fault of its own."""
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) in _POSTGRES_CONTENDED:
        return True
    return isinstance(exc, OperationalError) and any(m in str(exc.orig) for m in _SQLITE_BUSY)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (a new database is created from scratch)."""
    command.upgrade(alembic_config(engine), "head")


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def fast_rows(session: Session, query: Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of a core ``query`` as plain tuples, for reads of many rows of numbers: on
    PostgreSQL through the driver in binary (bytea arrives as bytes, not hex text to
    decode: half the cost of reading a bucket of 100,000 windows)."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return [tuple(row) for row in connection.execute(query)]
    compiled = query.compile(dialect=connection.dialect)
    driver: Any = connection.connection.driver_connection
    with driver.cursor(binary=True) as cursor:
        cursor.execute(str(compiled), compiled.params)
        return list(cursor.fetchall())


def update_stored(session: Session, changes: Sequence[tuple[SQLModel, dict[str, Any]]]) -> None:
    """Write new column values of loaded rows (each object with its values, the same
    columns for all) with one multi-row UPDATE by primary key, and set them on the objects
    as stored, so no flush writes them again. For thousands of rows: flushing as many
    changed objects cost several times the statement (a stage of 100,000 devices)."""
    if not changes:
        return
    table: Table = type(changes[0][0]).__table__  # type: ignore[attr-defined]
    keys = [column.name for column in table.primary_key]
    names = list(changes[0][1])
    statement = (
        update(table)
        .where(and_(*(table.c[k] == bindparam(f"k_{k}") for k in keys)))
        .values({n: bindparam(f"v_{n}") for n in names})
    )
    rows = []
    for row, values in changes:
        key = {f"k_{k}": getattr(row, k) for k in keys}
        rows.append(key | {f"v_{n}": values[n] for n in names})
        for name, value in values.items():
            set_committed_value(row, name, value)
    session.connection().execute(statement, rows)
