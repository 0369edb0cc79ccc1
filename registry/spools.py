"""Names of temporary upload files that say which process wrote them, so leftovers of dead uploads can go.

Every spool (``<data>/tmp/*.upload``), unpack dir and store temp file is named ``<pid>@<host>~...``. At startup
a registry removes those written on this host by a process that no longer runs (killed mid-upload), however
young; a live process's files are kept; other hosts' (replicas sharing the data dir) and untagged ones are kept
until ``max_age_s`` has passed. A process whose pid equals ours is dead too: at startup we have no upload in flight.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from pathlib import Path

DEFAULT_MAX_AGE_S = 3600.0      # a live upload of 512 MiB at 1 MiB/s takes ~9 min; an hour is ample
_TAG = re.compile(r"^(\d+)@([^~]+)~")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def tag() -> str:
    """The prefix of this process's temporary names."""
    return f"{os.getpid()}@{_host()}~"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by another user
        return True
    return True


def is_stale(path: Path, *, max_age_s: float = DEFAULT_MAX_AGE_S, startup: bool = False,
             now: float | None = None) -> bool:
    """True if ``path`` belongs to no live upload: its writer on this host is gone, or it is older than
    ``max_age_s``. ``startup``: our own pid's files are from a previous process (pid reuse) and are stale."""
    m = _TAG.match(path.name)
    if m and m.group(2) == _host():
        # Known writer on this host: stale exactly when it is gone (it removes its own files when it is done)
        pid = int(m.group(1))
        return (startup and pid == os.getpid()) or not _pid_alive(pid)
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > max_age_s


def stale_entries(directory: Path, **kw) -> list[Path]:  # noqa: ANN003
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.iterdir()) if is_stale(p, **kw)]


def remove(path: Path) -> int:
    """Delete a file or directory; return the bytes freed (0 if it was already gone)."""
    size = 0
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path, ignore_errors=True)
        else:
            size = path.lstat().st_size
            path.unlink()
    return size
