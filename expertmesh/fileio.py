"""Atomic file and directory writes: an output is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, TextIO

from expertmesh.errors import ConflictError, PackageError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | Path, *, mode: int | None = None, newline: str | None = None) -> Iterator[TextIO]:
    """A text file opened on a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds, so
    a reader sees the old file or the complete new one, never half of it. ``mode`` sets the permissions first
    (e.g. 0o600 for a file holding a token)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_package_json(path: str | Path, missing: str) -> Any:
    """The JSON document in a package's file ``path``; PackageError(``missing``) if it is absent, and one naming the
    file if it is not UTF-8 JSON (expert manifests, composition specs, uploaded composition documents)."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackageError(f"{path.name} is not valid UTF-8 JSON: {e}") from None


def write_json_atomic(path: str | Path, data: Any, *, mode: int | None = None) -> None:
    with atomic_file(path, mode=mode) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds.

    An exception (or Ctrl-C) inside the block removes the temporary directory, so ``final`` is either the
    complete new output or whatever was there before.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise ConflictError(f"{final} already exists; choose another output directory or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
