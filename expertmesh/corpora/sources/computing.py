"""computing: FOLDOC and the Jargon File from Debian's dictd packages, one document per headword.

A dictd dictionary is ``<name>.index`` (``headword TAB offset TAB length``, numbers in dictd's base64) and
``<name>.dict.dz`` (dictzip, readable as plain gzip). Several headwords can point at one entry (``!`` and
``exclamation mark``) and one headword at several entries: each entry becomes text once, under the first
headword that names it, and entries sharing that headword are joined, so no text appears in two documents
(which would leak across the train/held-out split). Install with:
    apt-get install -y dict-foldoc dict-jargon
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from expertmesh.corpora.sources import Doc, Source, debian_version, register_source
from expertmesh.errors import DataError

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def b64_number(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64[ch]
    return n


def read_dictd(index: Path, data: Path) -> dict[str, str]:
    """{headword: entry text} of one dictd dictionary, entries deduplicated as described above."""
    try:
        blob = gzip.decompress(data.read_bytes())
        lines = index.read_text(encoding="utf-8", errors="replace").splitlines()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read dictd dictionary {data} ({e})") from None
    entries: dict[tuple[int, int], str] = {}        # (offset, length) -> first headword
    for lineno, line in enumerate(lines, start=1):
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        try:
            span = (b64_number(parts[1]), b64_number(parts[2]))
        except KeyError:
            raise DataError(f"{index}:{lineno}: bad offset/length {parts[1]!r}/{parts[2]!r}") from None
        entries.setdefault(span, parts[0])
    docs: dict[str, list[str]] = {}
    for (offset, length), head in sorted(entries.items()):
        text = blob[offset:offset + length].decode("utf-8", errors="replace")
        docs.setdefault(head, []).append(_dedent(text))
    return {head: "\n\n".join(parts) for head, parts in docs.items()}


def _dedent(entry: str) -> str:
    # Entry bodies are indented 3-4 spaces throughout; the indentation carries no meaning.
    return "\n".join(line.strip() for line in entry.splitlines())


@register_source
@dataclass
class ComputingSource(Source):
    dictd_dir: str = "/usr/share/dictd"
    dictionaries: list[str] = field(default_factory=lambda: ["foldoc", "jargon"])

    name = "computing"
    domain = "computing"
    description = ("Free On-line Dictionary of Computing and the Jargon File (Debian dict-foldoc, dict-jargon), "
                   "one document per headword")

    def _files(self) -> list[tuple[str, Path, Path]]:
        root = Path(self.dictd_dir)
        found, missing = [], []
        for name in self.dictionaries:
            index, data = root / f"{name}.index", root / f"{name}.dict.dz"
            (found if index.is_file() and data.is_file() else missing).append((name, index, data))
        if missing:
            pkgs = " ".join(f"dict-{name}" for name, _, _ in missing)
            raise DataError(f"dictd dictionaries not found in {root}: {', '.join(n for n, _, _ in missing)}; "
                            f"install them with `apt-get install -y {pkgs}`")
        return found

    def check_available(self) -> None:
        self._files()

    def documents(self) -> Iterator[Doc]:
        for name, index, data in self._files():
            for head, text in sorted(read_dictd(index, data).items()):
                yield Doc(id=f"computing/{name}/{head}", load=lambda t=text: t, source=name)

    def provenance(self) -> dict:
        return {"package": " ".join(f"dict-{n}" for n in self.dictionaries),
                "version": {f"dict-{n}": debian_version(f"dict-{n}") for n in self.dictionaries},
                "path": self.dictd_dir}
