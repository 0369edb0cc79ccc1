"""Artifact store: immutable blobs addressed by their sha256.

``ArtifactStore`` is the interface an object store (S3, GCS, MinIO) implements; ``LocalArtifactStore`` keeps
blobs on local disk as ``<root>/blobs/ab/cdef...``. A blob is written to a temporary file on the same filesystem,
checked against its sha256 and renamed into place, so a reader sees either the whole blob or none.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from expertmesh.errors import IntegrityError, InvalidInputError, NotFoundError
from registry import spools

_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA.match(value):
        raise InvalidInputError(f"{value!r} is not a sha256 (64 lowercase hex digits)")
    return value


class ArtifactStore(abc.ABC):
    @abc.abstractmethod
    def put_file(self, path: Path, sha256: str) -> bool:
        """Store the file's bytes under ``sha256`` (verified); return True if the blob was new."""

    @abc.abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """A readable binary stream of the blob; NotFoundError if absent."""

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abc.abstractmethod
    def size(self, sha256: str) -> int: ...

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob (no error if absent). Only used to undo a failed publish."""

    @abc.abstractmethod
    def iter_blobs(self) -> Iterator[str]: ...

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        sha = hashlib.sha256(data).hexdigest()
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        try:
            return sha, self.put_file(Path(f.name), sha)
        finally:
            os.unlink(f.name)


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self._blobs / sha256[:2] / sha256[2:]

    def blob_path(self, sha256: str) -> Path:
        return self._path(sha256)

    @property
    def tmp_dir(self) -> Path:
        return self._tmp

    def put_file(self, path: Path, sha256: str) -> bool:
        final = self._path(sha256)
        if final.exists():
            # Reused by a new publish: make it young again, so ``registry gc`` keeps it through the grace period
            with contextlib.suppress(OSError):
                os.utime(final)
            return False
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=spools.tag() + sha256[:12] + ".")
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while block := src.read(1 << 20):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != sha256:
                raise IntegrityError(f"blob content does not match its sha256 {sha256[:12]}")
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        sha = hashlib.sha256(data).hexdigest()
        final = self._path(sha)
        if final.exists():
            return sha, False
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=sha[:12] + ".")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            return sha, True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"artifact {sha256[:12]} is missing from the store") from None

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"artifact {sha256[:12]} is missing from the store") from None

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()

    def iter_blobs(self) -> Iterator[str]:
        for sub in sorted(self._blobs.iterdir()):
            if sub.is_dir():
                for blob in sorted(sub.iterdir()):
                    yield sub.name + blob.name

    def leftovers(self) -> list[Path]:
        """Temporary files of unfinished writes (empty unless a process died mid-write)."""
        return sorted(self._tmp.iterdir())

    def clear_leftovers(self, older_than_s: float = spools.DEFAULT_MAX_AGE_S, *, startup: bool = True) -> int:
        """Remove temporary files of writes whose process died (``registry.spools``); others once old."""
        stale = spools.stale_entries(self._tmp, max_age_s=older_than_s, startup=startup)
        for p in stale:
            spools.remove(p)
        return len(stale)
