"""Infrastructure failures as errors of the one tree: the database or the artifact store failing at runtime.

The app's handlers call ``as_library_error`` for exceptions that are not ours, so an outage answers 503 (or 507
for a full disk) with a code that says which part failed, instead of a generic 500; and, as a handled error,
the answer keeps the client's keep-alive connection (an unhandled one makes the server drop it).
"""
from __future__ import annotations

import errno

from sqlalchemy.exc import DataError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from expertmesh.errors import (
    DatabaseUnavailableError, ExpertMeshError, InvalidInputError, StorageFullError, StoreUnavailableError,
)

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.ESTALE}


def store_error(exc: OSError) -> ExpertMeshError:
    """An OSError of the artifact store or the upload spool (both live under the data dir)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        return StorageFullError(f"the artifact store is full ({reason}); nothing was stored",
                                detail={"errno": exc.errno})
    return StoreUnavailableError(f"the artifact store cannot be written or read ({reason}); nothing was stored",
                                 detail={"errno": exc.errno})


def database_error(exc: SQLAlchemyError) -> ExpertMeshError | None:
    """The database is down or unreachable (503), or refused a value (400); None for anything else (a bug)."""
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, DataError):
        # A value the database refused (out of range, NUL in text): input the request checks let through.
        return InvalidInputError(f"the database refused a value of this request: {first_line}")
    if not isinstance(exc, (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)):
        return None
    return DatabaseUnavailableError(f"the registry database is unavailable ({type(cause).__name__}: {first_line}); "
                                    "retry later", detail={"cause": type(cause).__name__})


def as_library_error(exc: BaseException) -> ExpertMeshError | None:
    """The library error for an infrastructure exception, or None if ``exc`` is a bug to report as 500."""
    if isinstance(exc, OSError):
        return store_error(exc)
    if isinstance(exc, SQLAlchemyError):
        return database_error(exc)
    return None
