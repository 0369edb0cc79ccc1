"""law: licence texts of the ScanCode licence database (PyPI ``licensedcode-data``), one document per licence.

Each ``licensedcode/data/licenses/<key>.LICENSE`` file is YAML front matter between ``---`` lines, then the
licence text. Deprecated licences (145 of 2,310) are left out: most are renamed copies of a live licence, and
a copy on the other side of the train/held-out split would leak.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from expertmesh.corpora.sources import Doc, Source, package_version, register_source
from expertmesh.errors import DataError

_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n?(.*)\Z", re.S)
DIST = "licensedcode-data"


def split_front_matter(raw: str) -> tuple[str, str]:
    """(front matter, body); a file without front matter is all body."""
    m = _FRONT_MATTER.match(raw.replace("\r\n", "\n"))
    return (m.group(1), m.group(2)) if m else ("", raw)


def _licenses_dir() -> Path | None:
    # licensedcode is a namespace package (no __init__.py): find its folder without importing anything.
    spec = importlib.util.find_spec("licensedcode")
    for base in (spec.submodule_search_locations or []) if spec else []:
        d = Path(base) / "data" / "licenses"
        if d.is_dir():
            return d
    return None


@register_source
@dataclass
class LawSource(Source):
    licenses_dir: str | None = None      # default: the installed licensedcode-data package

    name = "law"
    domain = "law"
    description = "ScanCode licence database texts (PyPI licensedcode-data), one document per licence key"

    def _dir(self) -> Path:
        d = Path(self.licenses_dir) if self.licenses_dir else _licenses_dir()
        if d is None or not d.is_dir():
            raise DataError(f"licence texts not found{f' at {d}' if d else ''}: install them with "
                            f"`pip install {DIST}` (or `pip install -e '.[corpora]'`)")
        return d

    def check_available(self) -> None:
        self._dir()

    def documents(self) -> Iterator[Doc]:
        for path in sorted(self._dir().glob("*.LICENSE")):
            yield Doc(id=f"law/{path.stem}", load=lambda p=path: _licence_text(p), source=DIST)

    def provenance(self) -> dict:
        return {"package": DIST, "version": package_version(DIST), "path": str(self._dir())}


def _licence_text(path: Path) -> str:
    front, body = split_front_matter(path.read_text(encoding="utf-8", errors="replace"))
    if re.search(r"^is_deprecated:\s*(yes|true)\s*$", front, re.M | re.I):
        return ""
    return body
