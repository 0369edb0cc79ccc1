"""What publishing an expert and storing a composition share: the upload spool, safe unpacking, staged blobs.

Order of a publish, and why nothing partial survives a failure:
  1. the body streams to a temp file under the scratch dir, capped and hashed (``receive_upload``);
  2. it is unpacked into a temp dir (``unpack``) and verified there;
  3. each file goes into the content-addressed store (atomic rename per blob), tracked by ``StagedBlobs``;
  4. one short transaction inserts the rows.
An exception at any step removes the temp files, rolls the transaction back, and deletes the blobs this publish
created that no committed row references. After a commit, ``StagedBlobs.ensure`` re-puts any blob that a
concurrent failed publish of identical bytes deleted in between.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from sqlalchemy import exists, or_, select

from expertmesh.errors import IntegrityError, InvalidInputError, PayloadTooLargeError
from expertmesh.fileio import sha256_file
from expertmesh.archive import safe_extract
from registry.context import Registry
from registry.models import CompositionFile, CompositionVersion, ExpertFile, ExpertVersion

SHA_HEADER = "x-content-sha256"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(obj: Any) -> bytes:
    """The bytes identities are computed over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def stored_json(obj: Any) -> bytes:
    """How the registry writes manifest.json / composition.json (same layout as fileio.write_json_atomic)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def identity_of(document: dict[str, Any]) -> str:
    """sha256 of the canonical document minus ``version``; the document lists every other file's sha256."""
    return hashlib.sha256(canonical_json({k: v for k, v in document.items() if k != "version"})).hexdigest()


def check_declared_sha(value: str | None) -> str:
    if not value or not _HEX64.match(value.strip().lower()):
        raise InvalidInputError(f"header X-Content-SHA256 must carry the sha256 of the body (64 hex digits), "
                                f"got {value!r}", detail={"field": "X-Content-SHA256"})
    return value.strip().lower()


async def receive_upload(chunks: AsyncIterator[bytes], *, declared_sha: str, declared_length: str | None,
                         max_bytes: int, scratch: Path) -> Path:
    """Spool the body to a temp file; refuse it if over the cap, shorter than declared, or mis-hashed.

    The caller owns (and must unlink) the returned file. On any failure, including the client hanging up
    mid-body (Starlette raises ClientDisconnect), the partial file is removed here.
    """
    expected_len = None
    if declared_length is not None:
        try:
            expected_len = int(declared_length)
        except ValueError:
            raise InvalidInputError(f"Content-Length {declared_length!r} is not a number") from None
        if expected_len > max_bytes:
            raise PayloadTooLargeError(f"upload of {expected_len} bytes exceeds the {max_bytes} byte limit",
                                       detail={"limit": max_bytes})
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".upload")
    path = Path(name)
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                n += len(chunk)
                if n > max_bytes:
                    raise PayloadTooLargeError(f"upload exceeds the {max_bytes} byte limit", detail={"limit": max_bytes})
                h.update(chunk)
                f.write(chunk)
        if expected_len is not None and n != expected_len:
            raise IntegrityError(f"upload body has {n} bytes, Content-Length declared {expected_len}")
        if h.hexdigest() != declared_sha:
            raise IntegrityError("upload body does not match its X-Content-SHA256 (corrupted in transit?)",
                                 detail={"declared": declared_sha, "received": h.hexdigest()})
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def unpack(reg: Registry, upload: Path, allowed: set[str]) -> Iterator[Path]:
    """Safely unpack the upload into a temp directory that is removed when the block ends."""
    tmp = Path(tempfile.mkdtemp(dir=reg.settings.scratch_dir, prefix="unpack-"))
    try:
        safe_extract(upload, tmp, allowed=allowed, max_bytes=reg.settings.max_upload_bytes)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear_scratch(scratch: Path, older_than_s: float = 3600.0) -> int:
    """At startup: remove spools and unpack dirs left by a process that was killed mid-upload (young entries
    may belong to another live replica sharing the data dir)."""
    import time

    cutoff = time.time() - older_than_s
    removed = 0
    for p in scratch.glob("*") if scratch.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mtime < cutoff:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                removed += 1
    return removed


def file_table(root: Path, exclude: str) -> dict[str, tuple[str, int]]:
    """name -> (sha256, size) of the package files other than ``exclude`` (the manifest or composition.json)."""
    return {p.name: (sha256_file(p), p.stat().st_size) for p in sorted(root.iterdir()) if p.name != exclude}


def is_referenced(reg: Registry, sha: str) -> bool:
    with reg.db.read() as s:
        return bool(s.scalar(select(or_(
            exists().where(ExpertFile.sha256 == sha),
            exists().where(ExpertVersion.manifest_sha256 == sha),
            exists().where(CompositionFile.sha256 == sha),
            exists().where(CompositionVersion.document_sha256 == sha),
        ))))


class StagedBlobs:
    """Blobs put during one publish, so a failure can take back exactly the ones it added."""

    def __init__(self, reg: Registry):
        self.reg = reg
        self.created: list[str] = []
        self.sources: dict[str, Path | bytes] = {}

    def put_file(self, path: Path, sha: str) -> None:
        if self.reg.store.put_file(path, sha):
            self.created.append(sha)
        self.sources[sha] = path

    def put_bytes(self, data: bytes) -> str:
        sha, new = self.reg.store.put_bytes(data)
        if new:
            self.created.append(sha)
        self.sources[sha] = data
        return sha

    def release(self, keep: set[str] = frozenset()) -> None:
        """Delete the blobs this publish created, except ``keep`` and any a committed row references.

        Called with no ``keep`` on failure, and with the committed blobs after success (a retried
        transaction may have put a manifest carrying a version number that another publisher took)."""
        for sha in self.created:
            if sha in keep:
                continue
            with contextlib.suppress(Exception):
                if not is_referenced(self.reg, sha):
                    self.reg.store.delete(sha)
        self.created.clear()

    def ensure(self, shas: list[str]) -> None:
        for sha in shas:
            if not self.reg.store.exists(sha):
                src = self.sources[sha]
                if isinstance(src, bytes):
                    self.reg.store.put_bytes(src)
                else:
                    self.reg.store.put_file(src, sha)
