"""Trained experts cached by what determines their weights, so a benchmark rerun does not retrain.

The key is ``<name>-<config digest>-<base fingerprint[:12]>-<sha256 of the training file[:12]>``: the config
digest covers every field that changes the weights (steps, batch, lr, seed, LoRA spec ...) but not how the data
path is spelled (a relative and an absolute --work missed each other's entries), the fingerprint the base, the
file digest the text. A package is written with ``atomic_directory`` (complete or absent), so an interrupted run
leaves no half-written entry: the next run trains that expert again.

    from expertmesh.expert.cache import cached_train
    path, hit = cached_train(cfg, "runs/experts", base=base)      # cfg.out is ignored: the cache decides
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

from expertmesh.errors import DataError


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _train_file(data: str) -> Path:
    p = Path(data)
    p = p / "train.jsonl" if p.is_dir() else p
    if not p.is_file():
        raise DataError(f"data={data!r}: no training file at {p}")
    return p


def cache_key(cfg, base_fingerprint: str) -> str:
    return (f"{cfg.name}-{cfg.digest(with_paths=False)}-{base_fingerprint[:12]}-"
            f"{_file_digest(_train_file(cfg.data))}")


def cached_train(cfg, cache_dir: str | Path, *, base, progress: bool = False) -> tuple[Path, bool]:
    """(package dir, True if it came from the cache). Trains into the cache on a miss."""
    from expertmesh.expert.train import train_expert

    out = Path(cache_dir) / cache_key(cfg, base.fingerprint)
    if (out / "manifest.json").is_file():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*"):      # a killed run's partial package or checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    train_expert(dataclasses.replace(cfg, out=str(out), overwrite=True, resume=False), base=base, progress=progress)
    return out, False
