"""Engine, sessions and migrations. Built from settings by the app factory; nothing here is module-level state.

SQLite: WAL journal (readers never block the writer), a 30 s busy timeout, foreign keys on, and write sessions
open with ``BEGIN IMMEDIATE`` so two writers queue on the database lock instead of failing to upgrade a read
lock. PostgreSQL: write transactions lock the rows they change (``SELECT ... FOR UPDATE``) and unique
constraints back that up; callers retry on a unique violation.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from expertmesh.errors import ConflictError

T = TypeVar("T")
_WRITE_OPTION = "expertmesh_write"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        if url not in ("sqlite://", "sqlite:///:memory:"):
            path = url.split("///", 1)[-1]
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=pool_size)
        _sqlite_hooks(engine)
        return engine
    # A bounded connect: an unroutable host otherwise blocks startup and requests for the OS timeout (~30 s).
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         connect_args=connect_args)


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None   # we emit BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")


class Database:
    """Session factories over one engine: ``read()`` for queries, ``write()`` for state changes."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write = sessionmaker(bind=engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        with self._write() as s, s.begin():
            yield s

    def write_retrying(self, fn: Callable[[Session], T], *, attempts: int = 30) -> T:
        """Run ``fn`` in a write transaction, retrying when a concurrent writer won a unique constraint.

        On PostgreSQL two publishers of a new name both try to INSERT it; the loser gets a unique violation,
        retries, and then finds and locks the winner's row. SQLite serialises writers, so it rarely retries.
        """
        for attempt in range(attempts):
            try:
                with self.write() as s:
                    return fn(s)
            except SAIntegrityError:
                if attempt == attempts - 1:
                    raise ConflictError("too many concurrent writers on the same name; try again") from None
            except OperationalError as e:   # SQLite "database is locked" after the busy timeout
                if "locked" not in str(e).lower() or attempt == attempts - 1:
                    raise
            time.sleep(min(0.2, 0.005 * 2 ** attempt))
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(connection=None):  # noqa: ANN001, ANN201
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe to run from several replicas at once on PostgreSQL."""
    from alembic import command

    with engine.execution_options(**{_WRITE_OPTION: True}).begin() as conn:
        if conn.dialect.name == "postgresql":
            # One migrator at a time; the lock is released at commit. 0x6578706d = "expm".
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(1702391917)")
        command.upgrade(alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
