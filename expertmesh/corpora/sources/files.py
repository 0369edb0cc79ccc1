"""files: a data owner's own documents: JSONL files, ``.txt``/``.md`` files, or directories of them.

Ids: a JSONL record keeps its ``id``, else gets ``<file name>:<line>``; a text file's id is its path relative
to the directory given (its name when a single file is given). Every file is validated up front, so an
import either fails with the file and line at fault or writes a complete corpus.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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


def _text_doc(path: Path, doc_id: str) -> Doc:
    text = read_utf8(path)                 # fails early, naming the file, on non-UTF-8 bytes
    return Doc(id=doc_id, load=lambda t=text: t, source="user-files")


def iter_user_docs(path: Path) -> Iterator[Doc]:
    if not path.exists():
        raise DataError(f"{path} does not exist; give a .jsonl file, a .txt/.md file or a directory of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
        for f in files:
            if f.suffix.lower() in TEXT_SUFFIXES:
                yield _text_doc(f, f.relative_to(path).as_posix())
            elif f.suffix.lower() == ".jsonl":
                yield from _jsonl_docs(f, f.relative_to(path).as_posix())
        return
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_docs(path, path.name)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        yield _text_doc(path, path.name)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
                        "give a .jsonl, .txt or .md file or a directory of them")


@register_source
@dataclass
class FilesSource(Source):
    paths: list[str] = field(default_factory=list)

    name = "files"
    domain = None
    description = "user-supplied documents (.jsonl records, .txt/.md files)"

    def check_available(self) -> None:
        if not self.paths:
            raise DataError("no input files given")

    def documents(self) -> Iterator[Doc]:
        seen: dict[str, str] = {}
        for p in self.paths:
            docs = list(iter_user_docs(Path(p)))
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
