"""Startup checks: the database answers, the migrations apply, the store and spool dir take writes.

Each failure becomes one ``ConfigError`` naming the part and the cause, raised within seconds: PostgreSQL is
asked with a 5 s connect timeout (psycopg's default waits for the OS, which took 18-36 s for an unroutable
host), so ``expertmesh registry serve`` prints one ``error:`` line and exits non-zero instead of a traceback.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from expertmesh.errors import ConfigError
from registry.context import Registry
from registry.settings import RegistrySettings, _redact
from registry.store import ArtifactStore

CONNECT_TIMEOUT_S = 5


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{type(cause).__name__}: {first[:300]}"


def check_writable(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"the {what} {directory} is not writable ({e.strerror or e}); "
                          "fix its permissions or point the registry at another data dir") from None


def build_checked(settings: RegistrySettings, *, store: ArtifactStore | None = None) -> Registry:
    """Build the registry, or raise ConfigError saying which part failed (nothing is left running)."""
    check_writable(settings.scratch_dir, "upload spool dir")
    if store is None:
        check_writable(settings.resolved_artifact_dir, "artifact store")
    try:
        reg = Registry.build(settings, store=store)
    except OSError as e:
        raise ConfigError(f"the artifact store cannot be opened ({e.strerror or e})") from None
    check_database(reg)
    return reg


def check_database(reg: Registry, *, migrate: bool | None = None) -> None:
    url = _redact(reg.settings.resolved_database_url)
    try:
        with reg.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        reg.close()
        raise ConfigError(f"cannot reach the registry database at {url} ({_cause(e)})") from None
    if reg.settings.migrate_on_startup if migrate is None else migrate:
        try:
            reg.migrate()
        except Exception as e:  # noqa: BLE001 - alembic raises many kinds; each is a startup failure
            reg.close()
            raise ConfigError(f"migrating the registry database at {url} failed ({_cause(e)})") from None
