"""``expertmesh bench --own``: an owner's or coordinator's benchmark of their own experts on their own held-out text.

The experts are local packages (``--local``) and/or published ones (``--expert NAME[@VERSION]``, pulled with the
current login or ``--profile``); the corpora are the user's (``--data``, named like the expert or tag expected
to answer them). One composition per ``--router`` type is built from those experts under OUT/compositions/, and
any ``--composition`` given (a local dir or a registry NAME[@VERSION]) is scored beside them. Each is scored by
``compare_on_corpora`` (the code behind ``compose eval --compare``): base, each expert alone and oracle once,
then per composition its loss as it routes, sequence routing accuracy and opt-out exactness.

Writes OUT/own-bench.json (the tables, the command, the experts and where they came from) and OUT/own-bench.txt
(the table that is also printed). Cost: per corpus (experts + 2) x blocks forwards once, then blocks + 2 x
experts x opt-out blocks forwards per composition; the tiny model takes seconds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def resolve_experts(local: list[str], published: list[str], out: Path, fingerprint: str) -> dict[str, Path]:
    """Name -> package dir: local packages (a package dir or a dir of packages), then published experts
    pulled into OUT/experts/NAME (their base fingerprint checked against the base in use)."""
    from expertmesh.compose.build import expert_package_dirs
    from expertmesh.validate import split_ref

    dirs: dict[str, Path] = {}
    for p in map(Path, local):
        dirs.update(expert_package_dirs([p] if (p / "manifest.json").is_file() else p))
    if published:
        from clients.registry_client import RegistryClient

        with RegistryClient.from_config() as reg:
            for ref in published:
                name, version = split_ref(ref)
                dirs[name] = reg.pull(name, version or "latest", out / "experts" / name, overwrite=True,
                                      expected_fingerprint=fingerprint)
    return dirs


def run_own_bench(*, corpora: dict[str, str], local: list[str], published: list[str], routers: list[str],
                  compositions: list[str], base_spec: str | None, out: Path, seq_len: int, max_blocks: int,
                  opt_out_blocks: int, command: str, log: Callable[[str], None], top_k: int | None = None) -> dict:
    """Build, score and write; returns {"tables": [...], "text": the printed table, ...}. ``top_k`` overrides
    every scored composition's experts per token, as ``compose eval --top-k`` does (None: each one's own)."""
    from cli.compose import apply_top_k, effective_top_k, load_runtime
    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.evaluate import compare_on_corpora, compare_table_text
    from expertmesh.errors import ConfigError

    if not (local or published):                      # before the base loads (20 s or more on the real one)
        raise ConfigError("bench --own needs experts: --local DIR (packages) and/or --expert NAME[@VERSION]")
    base = load_base(base_spec)
    dirs = resolve_experts(local, published, out, base.fingerprint)
    log(f"experts: {', '.join(f'{n} ({d})' for n, d in dirs.items())}")
    refs = []
    for router in routers:
        target = out / "compositions" / f"own-{router}"
        build_composition(f"own-{router}", dirs, router, base=base, out=target, overwrite=True,
                          provenance={"source": "bench --own"})
        refs.append(str(target))
    refs += list(compositions)
    tables, measured = [], set()
    for ref in refs:
        log(f"scoring {ref}")
        rt = apply_top_k(load_runtime(ref, dirs, base), top_k)
        try:
            singles = not set(rt.member_names) <= measured     # base, alone, oracle: once per set of experts
            table = compare_on_corpora(rt, corpora, seq_len=seq_len, max_blocks=max_blocks,
                                       opt_out_blocks=opt_out_blocks, singles=singles)
            tables.append({**table, "top_k": effective_top_k(rt)})
            measured |= set(rt.member_names) if singles else set()
        finally:
            rt.close()
    text = compare_table_text(tables)
    doc = {"command": command, "base": str(base.path), "base_fingerprint": base.fingerprint,
           "experts": {n: str(d) for n, d in dirs.items()}, "corpora": dict(corpora), "seq_len": seq_len,
           "max_blocks": max_blocks, "top_k": top_k, "tables": tables}
    out.mkdir(parents=True, exist_ok=True)
    (out / "own-bench.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    (out / "own-bench.txt").write_text(text + "\n", encoding="utf-8")
    return {**doc, "text": text}
