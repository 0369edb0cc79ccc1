"""Corpus sources: one module per source, each a ``Source`` subclass registered once with ``@register_source``.

A source lists its documents cheaply (ids plus a lazy loader) so that a capped build only pays for the
documents it keeps: rendering one man page costs ~50 ms, 22k pages would take ~18 min on one core.
Options a source accepts (e.g. another directory to read from) are its dataclass fields.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from expertmesh.errors import ConfigError


@dataclass(frozen=True)
class Doc:
    """One document of a source. ``load`` returns its text; "" means "skip" (e.g. a man page alias)."""

    id: str
    load: Callable[[], str]
    source: str


class Source:
    """Base class; subclasses are dataclasses whose fields are the source's options."""

    name: ClassVar[str]                       # registry key
    domain: ClassVar[str | None]              # the domain it builds; None for user files (domain given)
    description: ClassVar[str]
    default_max_docs: ClassVar[int | None] = None
    load_workers: ClassVar[int] = 1           # >1 where loading waits on subprocesses
    cut_long: ClassVar[bool] = True           # False: a document over max_chars is an error, not cut

    def documents(self) -> Iterator[Doc]:
        """Every candidate document; raises DataError (naming the fix) when the source is unavailable."""
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise DataError if ``documents`` cannot work; cheap. Default: nothing to check."""

    def provenance(self) -> dict[str, Any]:
        """Package, version and location recorded in meta.json."""
        return {}

    def options(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v)
                for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}


SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    if cls.name in SOURCES and SOURCES[cls.name] is not cls:
        raise RuntimeError(f"corpus source {cls.name!r} registered twice")
    SOURCES[cls.name] = cls
    return cls


def load_sources() -> dict[str, type[Source]]:
    """Import every module in this package once so each registers itself."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return SOURCES


def make_source(name: str, options: dict[str, Any] | None = None) -> Source:
    sources = load_sources()
    if name not in sources:
        known = ", ".join(sorted(n for n, c in sources.items() if c.domain))
        raise ConfigError(f"domain={name!r} is not a known corpus source; choose one of: {known} "
                          "(or import your own files with `expertmesh data import`)")
    cls = sources[name]
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"source {name!r} has no option {unknown[0]!r}; its options are: "
                          f"{', '.join(sorted(fields)) or '(none)'}")
    return cls(**options)


# --- helpers shared by sources -------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where downloaded source archives are kept: $EXPERTMESH_CACHE/corpora (default ~/.cache/expertmesh)."""
    root = Path(os.environ.get("EXPERTMESH_CACHE", Path.home() / ".cache" / "expertmesh"))
    return root / "corpora"


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def debian_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
