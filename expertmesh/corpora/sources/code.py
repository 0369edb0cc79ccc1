"""code: the CPython standard library on this machine, one document per ``.py`` file (id = relative path).

Left out: test packages (``test``, ``tests``, ``idle_test``, ``test_*.py``), installed third-party packages
(``site-packages``, ``dist-packages``) and the generated codec tables in ``encodings`` (byte-to-character
tables written by gencodec.py, not code anyone writes).
"""
from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from expertmesh.corpora.sources import Doc, Source, register_source
from expertmesh.errors import DataError

SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def _keep(rel: Path) -> bool:
    return not (SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"))


def _walk_py(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]      # prune: site-packages can be huge
        found += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(found)


def _module_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return "" if "gencodec.py" in text[:1000] else text


@register_source
@dataclass
class CodeSource(Source):
    stdlib_dir: str | None = None        # default: sysconfig's stdlib path of the running Python

    name = "code"
    domain = "code"
    description = "CPython standard library .py files (tests and site-packages excluded), one per file"

    def _dir(self) -> Path:
        d = Path(self.stdlib_dir or sysconfig.get_paths()["stdlib"])
        if not d.is_dir():
            raise DataError(f"Python standard library not found at {d}; pass stdlib_dir=<path>")
        return d

    def check_available(self) -> None:
        self._dir()

    def documents(self) -> Iterator[Doc]:
        root = self._dir()
        for path in _walk_py(root):
            rel = path.relative_to(root)
            if _keep(rel):
                yield Doc(id=f"code/{rel.as_posix()}", load=lambda p=path: _module_text(p),
                          source=f"cpython-{platform.python_version()}-stdlib")

    def provenance(self) -> dict:
        return {"package": "cpython-stdlib", "version": platform.python_version(), "path": str(self._dir())}
