"""Central training on pooled data (the upper bound the federation is compared with, or MoT trained by a
coordinator that may use the data), plus held-out evaluation per domain. Same kinds, same outputs as the
Flower run: ``<out>/composition`` (or ``<out>/expert``) and ``<out>/history.json``.

    train_central("router", "comp", "experts", ["corpora/law", "corpora/code"], {"steps": 24}, out="runs/central")
"""
from __future__ import annotations

import time
from pathlib import Path

from expertmesh.fileio import write_json_atomic
from router_training.kinds import get_kind, load_for_kind


def train_central(kind_name: str, composition: str | None, experts: str | None, data: list[str], train: dict,
                  *, out: str, base=None, kind_options: dict | None = None, name: str | None = None,
                  seed: int = 0) -> dict:
    from router_training.task import load_blocks, pool_blocks

    t0 = time.time()
    kind = get_kind(kind_name)
    loaded = load_for_kind(kind, composition, experts, base, kind_options or {})
    try:
        seq_len = kind.seq_len(train)
        pooled = pool_blocks([load_blocks(loaded.base.tokenizer, d, seq_len) for d in data], seed=seed)
        stats = kind.train(loaded.model, pooled, train, seed)
        source = loaded.runtime.spec.name if loaded.runtime is not None else "central"
        name = name or f"{source}-{'tuned' if kind_name == 'router' else kind_name}-central"[:64]
        history = {"mode": "central", "kind": kind_name, "data": list(data), "train": train,
                   "kind_options": kind_options or {}, "stats": stats}
        history["output"] = kind.save(loaded.model, loaded, experts, out, name,
                                      {"mode": "central", "train": train, "kind_options": kind_options or {}})
        history["seconds"] = round(time.time() - t0, 1)
        write_json_atomic(Path(out) / "history.json", history)
        return history
    finally:
        loaded.close()


def evaluate_composition_domains(composition: str, experts: str, data: dict[str, str], *, base=None,
                                 seq_len: int = 128, max_blocks: int = 16, start: int = 0) -> dict[str, float]:
    """Held-out loss per domain of a stored composition (any router type; MoT scored from ``start``)."""
    from router_training.kinds import load_runtime
    from router_training.mot_train import evaluate_composed_from
    from router_training.task import load_blocks

    rt = load_runtime(composition, experts, base)
    try:
        out = {}
        for dom, path in data.items():
            blocks = load_blocks(rt.base.tokenizer, path, seq_len, split="heldout", max_blocks=max_blocks)
            if hasattr(rt.model, "mot"):
                from router_training.mot_train import evaluate_mot

                out[dom] = round(evaluate_mot(rt.model.mot, blocks, start=start)["loss"], 5)
            else:
                out[dom] = round(evaluate_composed_from(rt.model, blocks, start=start), 5)
        out["mean"] = round(sum(out.values()) / max(len(out), 1), 5)
        return out
    finally:
        rt.close()
