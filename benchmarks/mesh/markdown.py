"""BENCHMARKS.md sections: each benchmark owns the text between its ``<!-- name:start -->`` and
``<!-- name:end -->`` markers and rewrites only that, so one benchmark's run never touches another's figures."""
from __future__ import annotations

from pathlib import Path

NEW_FILE = "# Benchmarks\n\nEvery figure below was printed by the command named above it.\n"


def replace_section(path: str | Path, name: str, body: str) -> None:
    """Replace section ``name`` of the markdown file (append it, or create the file, where missing)."""
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else NEW_FILE
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
