"""The composition page's routing heat map, read from the composition's stored evaluation.

Where it comes from: ``composition.json`` keeps free-form provenance, and an evaluation stored there as
``provenance["evaluation"]`` is read in either of the two forms expertmesh writes:

* the benchmark heat map (expertmesh/bench): ``{"entries": [e0, e1, ...], "by_domain": {domain: [mass, ...]}}``;
* ``compose eval --json`` results (expertmesh/compose/evaluate.py), one or a list:
  ``{"data": path, "gate_mass": {entry: mass}}``, each one row labelled by its data set.

Each row is a held-out data set; each column a gate entry ("public" is the base); a cell is the mean gate mass that
entry received on that data set (rows sum to ~1). The per-expert share is the column mean over rows. Anything
malformed yields no heat map (the page says so) rather than an error: it is optional provenance, not the format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

MAX_ROWS, MAX_COLS = 64, 256


@dataclass(frozen=True)
class Cell:
    value: float
    shade: int     # 0..10, the CSS class heat-N (darker = more mass)


@dataclass(frozen=True)
class HeatMap:
    source: str
    entries: list[str]
    rows: list[tuple[str, list[Cell]]]
    share: list[tuple[str, float]]   # per entry: mean mass over rows, largest first


def _mass(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        return None
    return float(x)


def _from_bench(ev: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[float]]]] | None:
    entries, by_domain = ev.get("entries"), ev.get("by_domain")
    if not isinstance(entries, list) or not isinstance(by_domain, dict):
        return None
    rows = []
    for domain, values in by_domain.items():
        if not isinstance(values, list) or len(values) != len(entries):
            return None
        masses = [_mass(v) for v in values]
        if any(m is None for m in masses):
            return None
        rows.append((str(domain), masses))
    return [str(e) for e in entries], rows   # type: ignore[return-value]


def _from_eval(results: list[Any]) -> tuple[list[str], list[tuple[str, list[float]]]] | None:
    entries: list[str] = []
    parsed = []
    for i, r in enumerate(results):
        gm = r.get("gate_mass") if isinstance(r, dict) else None
        if not isinstance(gm, dict) or not gm:
            return None
        for e in gm:
            if str(e) not in entries:
                entries.append(str(e))
        label = PurePath(str(r.get("data") or f"evaluation {i + 1}")).parent.name or str(r.get("data"))
        parsed.append((label, {str(k): _mass(v) for k, v in gm.items()}))
    if any(m is None for _, gm in parsed for m in gm.values()):
        return None
    return entries, [(label, [gm.get(e, 0.0) for e in entries]) for label, gm in parsed]


def heat_map(document: dict[str, Any]) -> HeatMap | None:
    prov = document.get("provenance")
    ev = prov.get("evaluation") if isinstance(prov, dict) else None
    if isinstance(ev, dict) and "by_domain" in ev:
        got, source = _from_bench(ev), "stored evaluation (benchmark heat map)"
    elif isinstance(ev, (dict, list)) and ev:
        got, source = _from_eval(ev if isinstance(ev, list) else [ev]), "stored evaluation (compose eval)"
    else:
        return None
    if got is None or not got[1] or len(got[1]) > MAX_ROWS or len(got[0]) > MAX_COLS:
        return None
    entries, rows = got
    top = max((v for _, vs in rows for v in vs), default=0.0) or 1.0
    cells = [(label, [Cell(v, min(10, round(10 * v / top))) for v in vs]) for label, vs in rows]
    means = [sum(vs[j] for _, vs in rows) / len(rows) for j in range(len(entries))]
    total = sum(means) or 1.0
    share = sorted(((e, m / total) for e, m in zip(entries, means)), key=lambda x: -x[1])
    return HeatMap(source=source, entries=entries, rows=cells, share=share)
