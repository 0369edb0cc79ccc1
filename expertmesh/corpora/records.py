"""Corpus records: one JSON object per line, one document per record.

A record is ``{"id": str, "domain": str, "source": str, "text": str}``; only a non-empty ``text`` is required
when reading, so user files with just ``{"text": ...}`` are accepted. Every reading error is a ``DataError``
that names the file and the line (or byte offset) and says what is wrong.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from expertmesh.errors import DataError
from expertmesh.fileio import atomic_file

TEXT_SUFFIXES = (".txt", ".md")


def read_utf8(path: Path) -> str:
    """The whole file as text; a bad byte is reported with its line and byte offset."""
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if not path.is_file():
        raise DataError(f"{path} is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start}); "
                        "re-encode the file as UTF-8", detail={"path": str(path), "line": line,
                                                                "offset": e.start}) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is harmless; drop it


def _check_record(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object like {{\"text\": \"...\"}}, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        what = "missing" if "text" not in obj else f"not a non-empty string ({type(text).__name__})"
        raise DataError(f"{where}: field \"text\" is {what}; every record needs non-empty text")
    if "id" in obj and not isinstance(obj["id"], str):
        raise DataError(f"{where}: field \"id\" must be a string, got {obj['id']!r}")
    return obj


def read_records(path: str | Path) -> list[dict]:
    """Read and validate a JSONL corpus file: UTF-8, one JSON object per line, each with non-empty ``text``.

    Blank lines are ignored. Ids, where present, must be unique (a held-out split is by whole document).
    """
    path = Path(path)
    text = read_utf8(path)
    records: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})",
                            detail={"path": str(path), "line": lineno}) from None
        rec = _check_record(obj, where)
        if "id" in rec:
            if rec["id"] in seen:
                raise DataError(f"{where}: duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
            seen[rec["id"]] = lineno
        records.append(rec)
    if not records:
        raise DataError(f"{path}: no records (the file is empty); expected one JSON object per line "
                        "with a non-empty \"text\"")
    return records


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSONL atomically (complete file or none); returns the number written."""
    n = 0
    with atomic_file(path, newline="\n") as f:
        for n, rec in enumerate(records, start=1):
            _check_record(rec, f"record {n} for {path}")
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
    return n


def load_texts(path: str | Path, *, split: str = "train") -> list[str]:
    """The document texts of a ``.jsonl`` file, a corpus domain directory (its ``<split>.jsonl``) or a
    ``.txt``/``.md`` file (one document)."""
    path = Path(path)
    if path.is_dir():
        split_file = path / f"{split}.jsonl"
        if not split_file.is_file():
            raise DataError(f"{path} is a directory without {split}.jsonl; give a corpus domain directory "
                            "(expertmesh data build/import), a .jsonl or a .txt file")
        path = split_file
    if path.suffix.lower() in TEXT_SUFFIXES:
        text = read_utf8(path)
        if not text.strip():
            raise DataError(f"{path}: no records (the file is empty)")
        return [text]
    if not path.exists():
        raise DataError(f"{path} does not exist; give a corpus domain directory, a .jsonl or a .txt file")
    return [r["text"] for r in read_records(path)]
