"""Quality half of the scale bench: N in {4, 16, 64} real experts over fine-grained real domains.

Per N (experts of the same budget, the first N of one fixed order that interleaves the source families):
  routing_top1/top3     retriever (pilots) over held-out passages of each covered domain: is the domain's own
                        expert the best / among the 3 best of the N?  Mean over domains, per-domain in details
  composed_over_oracle  mean over covered domains of exp(composed loss) / exp(own expert alone), the default
                        composition type (``domain``: token gate over every member); ``retrieve`` in details
  merge                 uniform merge of the N experts' deltas (fixed weight 1/N each: exactly the averaged
                        delta W, since each delta is linear in x), in details next to the composition
  uncovered_delta_nats  mean over domains kept without an expert of composed loss - base loss (max in details)
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

UNCOVERED = ["literature.histories", "law.cla", "systems.man4"]


def domain_order(domains: list[str]) -> list[str]:
    """Round-robin over the families (medicine, law, code, ...) so every prefix mixes them."""
    by_family: dict[str, list[str]] = {}
    for d in domains:
        by_family.setdefault(d.split(".")[0], []).append(d)
    out: list[str] = []
    while any(by_family.values()):
        for fam in list(by_family):
            if by_family[fam]:
                out.append(by_family[fam].pop(0))
    return out


def train_all(cfgs, base, cache: Path, log) -> tuple[dict[str, Path], dict]:
    from expertmesh.expert.cache import cached_train

    dirs, info = {}, {"trained": 0, "cached": 0, "train_seconds": 0.0}
    for i, cfg in enumerate(cfgs):
        t0 = time.perf_counter()
        dirs[cfg.name], hit = cached_train(cfg, cache, base=base)
        dt = time.perf_counter() - t0
        info["cached" if hit else "trained"] += 1
        info["train_seconds"] += dt
        log(f"[scale] expert {i + 1}/{len(cfgs)} {cfg.name}: {'cached' if hit else f'trained in {dt:.0f}s'}")
    info["train_seconds"] = round(info["train_seconds"], 1)
    return dirs, info


def heldout_blocks(base, corpora: dict[str, Path], seq_len: int, n_blocks: int) -> dict[str, torch.Tensor]:
    """Held-out blocks per domain; a domain whose held-out split is shorter than one block is left out (its
    loss figures are not measured; routing still uses its passages)."""
    from expertmesh.corpora.records import load_texts
    from expertmesh.errors import DataError
    from expertmesh.expert.blocks import pack_blocks

    out = {}
    for d, p in corpora.items():
        try:
            out[d] = pack_blocks(base.tokenizer, load_texts(p, split="heldout"), seq_len, max_blocks=n_blocks,
                                 what=f"held-out {d}")
        except DataError:
            continue
    return out


def heldout_passages(corpora: dict[str, Path], per_domain: int) -> dict[str, list[str]]:
    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.signature import passages

    return {d: passages(load_texts(p, split="heldout"), limit=per_domain) for d, p in corpora.items()}


def mean_loss(rt, blocks: torch.Tensor, plan_kw: dict) -> float:
    """Mean next-token loss of the runtime on ``blocks`` with one plan per block (from its own text)."""
    tok = rt.base.tokenizer
    total, count = 0.0, 0
    for i in range(len(blocks)):
        ids = blocks[i:i + 1]
        plan = rt.plan(tok.batch_decode(ids, skip_special_tokens=True), **plan_kw)
        logits = rt.forward(ids, plan=plan).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total / count


def routing_accuracy(rt, passages: dict[str, list[str]], covered: list[str]) -> tuple[dict, np.ndarray]:
    """Per covered domain: share of its held-out passages whose own expert is top-1 / top-3; and the
    [domain, predicted top-1] confusion counts (member order)."""
    members = rt.member_names
    conf = np.zeros((len(covered), len(members)), dtype=np.int64)
    per = {}
    for i, d in enumerate(covered):
        if not passages.get(d):                                       # a held-out split too short to cut one
            continue
        s = rt._index.scores(rt.embed(passages[d]))                   # [P, N]
        order = np.argsort(-s, axis=1, kind="stable")
        own = members.index(d)
        per[d] = {"top1": float(np.mean(order[:, 0] == own)), "top3": float(np.mean((order[:, :3] == own).any(1))),
                  "passages": len(passages[d])}
        np.add.at(conf[i], order[:, 0], 1)
    return per, conf


def evaluate_n(base, dirs: dict[str, Path], covered: list[str], uncovered: list[str], blocks, passages,
               log, memo: dict | None = None, pilot_score: str = "mean") -> dict:
    """Every quality figure for one N (the members ``covered``, in that order). ``memo`` keeps base and oracle
    losses between N: by the opt-out property a composition masked to one member (or none) computes exactly
    what that member alone (or the base) does, whatever N is."""
    memo = {} if memo is None else memo
    from expertmesh.compose.build import build_composition, load_members
    from expertmesh.compose.runtime import CompositionRuntime

    members = {d: dirs[d] for d in covered}
    experts = load_members(members, base.fingerprint)
    out: dict = {"members": covered, "uncovered": uncovered, "per_domain": {},
                 "no_heldout_block": [d for d in covered + uncovered if d not in blocks]}
    for router in ("domain", "retrieve"):
        spec, tensors = build_composition(f"scale-{len(covered)}-{router}", members, router, base=base,
                                          pilot_score=pilot_score)
        rt = CompositionRuntime(spec, tensors, base, experts)
        try:
            if router == "retrieve":
                out["routing"], out["confusion"] = routing_accuracy(rt, passages, covered)
            for d in (x for x in covered + uncovered if x in blocks):
                row = out["per_domain"].setdefault(d, {})
                row[router] = mean_loss(rt, blocks[d], {})
                if router == "domain":
                    if ("base", d) not in memo:
                        memo[("base", d)] = mean_loss(rt, blocks[d], {"include": []})
                    row["base"] = memo[("base", d)]
                    if d in covered:
                        if ("oracle", d) not in memo:
                            memo[("oracle", d)] = mean_loss(rt, blocks[d], {"include": [d]})
                        row["oracle"] = memo[("oracle", d)]
                        row["uniform_merge"] = _merge_loss(rt, blocks[d])
        finally:
            rt.close()
        log(f"[scale] N={len(covered)} {router}: evaluated {len(covered) + len(uncovered)} domains")
    return out


def _merge_loss(rt, blocks: torch.Tensor) -> float:
    n = len(rt.member_names)
    fixed = torch.full((1, n + 1), 1.0 / n)
    fixed[0, 0] = 0.0
    total, count = 0.0, 0
    for i in range(len(blocks)):
        ids = blocks[i:i + 1]
        with torch.inference_mode():
            logits = rt.model(ids, fixed_weights=fixed).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total / count


def summarise(n: int, ev: dict) -> dict:
    pd = ev["per_domain"]
    covered = [d for d in ev["members"] if d in pd]          # members with at least one held-out block
    ratio = [math.exp(pd[d]["domain"] - pd[d]["oracle"]) for d in covered]
    ratio_r = [math.exp(pd[d]["retrieve"] - pd[d]["oracle"]) for d in covered]
    merge = [math.exp(pd[d]["domain"] - pd[d]["uniform_merge"]) for d in covered]
    unc = {d: pd[d]["domain"] - pd[d]["base"] for d in ev["uncovered"] if d in pd}
    unc_r = {d: pd[d]["retrieve"] - pd[d]["base"] for d in ev["uncovered"] if d in pd}
    routing = ev["routing"]
    return {
        "n_experts": n,
        "routing_top1": round(float(np.mean([r["top1"] for r in routing.values()])), 4),
        "routing_top3": round(float(np.mean([r["top3"] for r in routing.values()])), 4),
        "composed_over_oracle": round(float(np.mean(ratio)), 4),
        "uncovered_delta_nats": round(float(np.mean(list(unc.values()))), 4),
        "details": {"no_heldout_block": ev.get("no_heldout_block", []),
                    "retrieve_over_oracle": round(float(np.mean(ratio_r)), 4),
                    "composed_over_uniform_merge": round(float(np.mean(merge)), 4),
                    "oracle_over_base": round(float(np.mean([math.exp(pd[d]["oracle"] - pd[d]["base"])
                                                             for d in covered])), 4),
                    "uncovered_delta_max_nats": round(max(unc.values()), 4),
                    "uncovered_delta_retrieve_nats": {d: round(v, 4) for d, v in unc_r.items()},
                    "uncovered_delta_by_domain": {d: round(v, 4) for d, v in unc.items()},
                    "routing_by_domain": routing,
                    "loss_by_domain": {d: {k: round(v, 4) for k, v in row.items()} for d, row in pd.items()}},
    }


def pilot_routing(corpora: dict[str, Path], order: list[str], ns: list[int], passages: dict[str, list[str]],
                  *, num_pilots: int = 8, limit: int = 256, seed: int = 0, rules=("mean",), log=print) -> dict:
    """Retriever routing accuracy from the owners' pilots alone (what each package's signature carries:
    k-means centroids of the embedded training passages, as train_expert makes them, here from at most
    ``limit`` passages per domain), for every N in ``ns`` over the prefix ``order[:N]``. Needs no trained
    LoRA, so it reaches N=64 where training 64 experts did not fit the time. One result per scoring rule
    (compose/selector.py) in ``rules``: {rule: {N: ...}}."""
    from expertmesh.compose.selector import PilotIndex
    from expertmesh.corpora.records import load_texts
    from expertmesh.embedder import get_embedder
    from expertmesh.expert.signature import passages as split_passages, pilot_embeddings

    emb = get_embedder(None)
    top = max(ns)
    pilots = {}
    for i, d in enumerate(order[:top]):
        pilots[d] = pilot_embeddings(emb.embed(split_passages(load_texts(corpora[d]), limit=limit)), num_pilots, seed)
        if (i + 1) % 8 == 0:
            log(f"[scale] pilots {i + 1}/{top}")
    queries = {d: emb.embed(passages[d]) for d in order[:top] if passages[d]}    # (a tiny held-out doc: none)
    out = {rule: {} for rule in rules}
    for rule, n in ((r, n) for r in rules for n in ns):
        names = order[:n]
        index = PilotIndex(np.concatenate([pilots[d] for d in names]),
                           np.concatenate([np.full(len(pilots[d]), j) for j, d in enumerate(names)]), n, rule=rule)
        conf = np.zeros((n, n), dtype=np.int64)
        per = {}
        for i, d in enumerate(names):
            if d not in queries:
                continue
            rank = np.argsort(-index.scores(queries[d]), axis=1, kind="stable")
            per[d] = {"top1": float(np.mean(rank[:, 0] == i)), "top3": float(np.mean((rank[:, :3] == i).any(1))),
                      "passages": len(queries[d])}
            np.add.at(conf[i], rank[:, 0], 1)
        out[rule][n] = {"per_domain": per, "confusion": conf.tolist(), "members": names,
                        "no_heldout_passages": [d for d in names if d not in queries],
                        "top1": round(float(np.mean([p["top1"] for p in per.values()])), 4),
                        "top3": round(float(np.mean([p["top3"] for p in per.values()])), 4)}
    return out
