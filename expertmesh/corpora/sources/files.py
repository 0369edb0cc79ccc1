"""files: a data owner's own documents: JSONL files, ``.txt``/``.md`` files, or directories of them.

Ids: a JSONL record keeps its ``id``, else gets ``<file name>:<line>``; a text file's id is its path relative
to the directory given (its name when a single file is given). Every file is validated up front, so an
import either fails with the file and line at fault or writes a complete corpus.

``split`` cuts each .txt/.md file into several documents (ids ``<file>#<n>``, n from 1):
    file           the whole file is one document (default)
    lines          one document per non-blank line (line-per-record files)
    blank-lines    documents separated by one or more blank lines (paragraphs, records)
    regex:PATTERN  a new document starts at every line that matches PATTERN (a header: "regex:^CHAPTER ")
A user's text is never cut to fit ``max_chars``: a longer document is an error that names the flags.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from expertmesh.corpora.records import TEXT_SUFFIXES, read_utf8, read_records
from expertmesh.corpora.sources import Doc, Source, register_source
from expertmesh.errors import DataError


def _jsonl_docs(path: Path, label: str) -> Iterator[Doc]:
    lines = read_utf8(path).split("\n")
    records = read_records(path)            # validates the whole file first
    # Recover line numbers for records without an id (read_records skips blank lines).
    numbered = [i for i, ln in enumerate(lines, start=1) if ln.strip()]
    for rec, lineno in zip(records, numbered):
        doc_id = rec.get("id") or f"{label}:{lineno}"
        yield Doc(id=doc_id, load=lambda t=rec["text"]: t, source=str(rec.get("source") or label))


SPLIT_MODES = ("file", "lines", "blank-lines", "regex:PATTERN")


def splitter(mode: str) -> Callable[[str], list[str]]:
    """The function that cuts one file's text into document texts, for a ``--split`` value."""
    if mode == "file":
        return lambda text: [text]
    if mode == "lines":
        return lambda text: [ln for ln in text.splitlines() if ln.strip()]
    if mode == "blank-lines":
        return lambda text: [b for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if b.strip()]
    if mode.startswith("regex:") and mode[6:]:
        try:
            header = re.compile(mode[6:], re.MULTILINE)
        except re.error as e:
            raise DataError(f"split={mode!r}: not a valid regular expression ({e})") from None
        return lambda text: _split_at_headers(text, header)
    raise DataError(f"split={mode!r} is not a split mode; choose from {', '.join(SPLIT_MODES)}",
                    detail={"field": "split"})


def _split_at_headers(text: str, header: re.Pattern) -> list[str]:
    starts = sorted({0} | {text.rfind("\n", 0, m.start()) + 1 for m in header.finditer(text)})
    blocks = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    return [b for b in blocks if b.strip()]


def _text_docs(path: Path, doc_id: str, split: Callable[[str], list[str]], whole: bool) -> Iterator[Doc]:
    text = read_utf8(path)                 # fails early, naming the file, on non-UTF-8 bytes
    if whole:
        yield Doc(id=doc_id, load=lambda t=text: t, source="user-files")
        return
    for n, block in enumerate(split(text), start=1):
        yield Doc(id=f"{doc_id}#{n}", load=lambda t=block: t, source="user-files")


def iter_user_docs(path: Path, split: str = "file") -> Iterator[Doc]:
    if not path.exists():
        raise DataError(f"{path} does not exist; give a .jsonl file, a .txt/.md file or a directory of them")
    cut, whole = splitter(split), split == "file"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
        for f in files:
            if f.suffix.lower() in TEXT_SUFFIXES:
                yield from _text_docs(f, f.relative_to(path).as_posix(), cut, whole)
            elif f.suffix.lower() == ".jsonl":
                yield from _jsonl_docs(f, f.relative_to(path).as_posix())
        return
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_docs(path, path.name)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        yield from _text_docs(path, path.name, cut, whole)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
                        "give a .jsonl, .txt or .md file or a directory of them")


@register_source
@dataclass
class FilesSource(Source):
    paths: list[str] = field(default_factory=list)
    split: str = "file"

    name = "files"
    domain = None
    description = "user-supplied documents (.jsonl records, .txt/.md files)"
    cut_long = False                          # an owner's text is split or refused, never silently cut

    def check_available(self) -> None:
        if not self.paths:
            raise DataError("no input files given")
        splitter(self.split)

    def documents(self) -> Iterator[Doc]:
        seen: dict[str, str] = {}
        for p in self.paths:
            docs = list(iter_user_docs(Path(p), self.split))
            for doc in docs:
                if doc.id in seen:
                    raise DataError(f"duplicate document id {doc.id!r} (in {seen[doc.id]} and {p}); "
                                    "ids must be unique across the inputs")
                seen[doc.id] = p
            yield from docs
        if not seen:
            raise DataError(f"no documents found in {', '.join(map(str, self.paths))}; "
                            "expected .jsonl, .txt or .md files")

    def provenance(self) -> dict:
        return {"package": "user files", "version": None, "paths": [str(Path(p).resolve()) for p in self.paths]}
