"""The digest of an expert's training documents: train records it in the manifest, the audit compares it.

Its own module so the two share it without importing each other."""
from __future__ import annotations

import hashlib


def data_digest(texts: list[str]) -> str:
    """sha256 of the training documents in order, each prefixed by its UTF-8 length (so ["ab"] != ["a", "b"])."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
