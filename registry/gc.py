"""Garbage collection of the artifact store: blobs no row references, and spools of dead uploads.

A publish that fails takes back its own blobs (``publishing.StagedBlobs``), but a process killed between
storing a blob and committing its row leaves the blob behind, unreferenced, forever; and a killed upload
leaves its spool. ``collect`` finds both and (unless ``dry_run``) deletes them.

Why a grace period: a publish in flight stores its blobs *before* the transaction that references them
commits, so a blob younger than ``grace_s`` may be about to be referenced and is kept. Spools and temp
files go as soon as their writer's process is gone (``registry.spools``), or once older than ``grace_s``.

    expertmesh registry gc --dry-run        # what would go
    expertmesh registry gc                  # delete it
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, union

from registry import spools
from registry.context import Registry
from registry.models import CompositionFile, CompositionVersion, ExpertFile, ExpertVersion
from registry.publishing import is_referenced

DEFAULT_GRACE_S = spools.DEFAULT_MAX_AGE_S


@dataclass
class GCReport:
    dry_run: bool
    blobs_total: int = 0
    blobs_referenced: int = 0
    unreferenced: list[str] = field(default_factory=list)     # sha256 of blobs removed (or to remove)
    kept_young: int = 0                                       # unreferenced but younger than the grace period
    spools: list[str] = field(default_factory=list)           # paths removed (or to remove)
    bytes_freed: int = 0

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "blobs_total": self.blobs_total, "blobs_referenced": self.blobs_referenced,
                "unreferenced_blobs": len(self.unreferenced), "kept_young": self.kept_young,
                "stale_spools": len(self.spools), "bytes_freed": self.bytes_freed}


def referenced_blobs(reg: Registry) -> set[str]:
    """Every sha256 a committed row points at: files and the stored manifest/document of each version."""
    q = union(select(ExpertFile.sha256), select(ExpertVersion.manifest_sha256),
              select(CompositionFile.sha256), select(CompositionVersion.document_sha256))
    with reg.db.read() as s:
        return set(s.scalars(q))


def _blob_age(reg: Registry, sha: str, now: float) -> float:
    path: Path | None = getattr(reg.store, "blob_path", lambda _sha: None)(sha)
    if path is None:
        return float("inf")       # a store without local files: no age known, treat as old
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def collect(reg: Registry, *, dry_run: bool = False, grace_s: float = DEFAULT_GRACE_S) -> GCReport:
    report = GCReport(dry_run=dry_run)
    now = time.time()
    # Listing the store before reading the references: a blob published in between is referenced by then.
    blobs = list(reg.store.iter_blobs())
    referenced = referenced_blobs(reg)
    report.blobs_total = len(blobs)
    for sha in blobs:
        if sha in referenced:
            report.blobs_referenced += 1
        elif _blob_age(reg, sha, now) < grace_s:
            report.kept_young += 1
        else:
            if not dry_run and (_blob_age(reg, sha, time.time()) < grace_s or is_referenced(reg, sha)):
                report.kept_young += 1    # a publish reused it while we looked (put_file touches it)
                continue
            report.unreferenced.append(sha)
            report.bytes_freed += reg.store.size(sha)
            if not dry_run:
                reg.store.delete(sha)
    tmp_dirs = [reg.settings.scratch_dir, getattr(reg.store, "tmp_dir", None)]
    for directory in [d for d in tmp_dirs if d is not None]:
        for p in spools.stale_entries(Path(directory), max_age_s=grace_s, now=now):
            report.spools.append(str(p))
            report.bytes_freed += spools.remove(p) if not dry_run else _size(p)
    return report


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.lstat().st_size
    except FileNotFoundError:
        return 0
