"""Manifest sections as table rows for the expert page: held-out metrics and the owner-side audit.

Both are free-form JSON objects written by expertmesh (``metrics`` by expert training; ``audit`` by the expert
audit, once it exists). A section whose values are themselves objects with shared keys (``{"base": {...},
"expert": {...}}``) becomes a side-by-side table (one column per object); plain values become key/value rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    scalars: list[tuple[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.scalars and not self.rows


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)[:500]


def section(data: Any) -> Section:
    if not isinstance(data, dict):
        return Section(scalars=[("value", fmt(data))]) if data not in (None, "", [], {}) else Section()
    nested = {k: v for k, v in data.items() if isinstance(v, dict)}
    scalars = [(str(k), fmt(v)) for k, v in data.items() if k not in nested]
    keys: list[str] = []
    for inner in nested.values():
        keys += [str(k) for k in inner if str(k) not in keys]
    rows = [(k, [fmt(inner[k]) if k in inner else "" for inner in nested.values()]) for k in keys]
    return Section(scalars=scalars, columns=[str(c) for c in nested], rows=rows)
