"""Routing rules at 64 fine domains (issue 11): which pilot scoring rule and how many pilots route best.

    python benchmarks/routing_rules.py                 # embeds once (cached under runs/scale/routing-emb.npz)

The retriever scores a request against each member's pilots (k-means centroids of the owner's embedded
training passages, what a package's signature carries). This compares, over the 64 covered fine domains and
held-out passages of each: the scoring rule (mean cosine over the member's pilots, the maximum, the mean of
the best 3, a log-sum-exp) and the number of pilots, with and without centring (subtracting the mean of all
published pilots, which the coordinator has, from queries and pilots before the cosine; MiniLM embeddings
share a large common direction). Writes benchmarks/scale-bench/routing_rules.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
OUT = ROOT / "benchmarks" / "scale-bench" / "routing_rules.json"


def embed_all(corpora: dict[str, Path], names: list[str], limit: int, per_domain: int, cache: Path) -> dict:
    """{"train": {d: [P, D]}, "heldout": {d: [Q, D]}} normalised MiniLM embeddings, cached on disk."""
    if cache.is_file():
        z = np.load(cache)
        return {part: {d: z[f"{part}/{d}"] for d in names if f"{part}/{d}" in z} for part in ("train", "heldout")}
    from expertmesh.corpora.records import load_texts
    from expertmesh.embedder import get_embedder
    from expertmesh.expert.signature import passages

    emb = get_embedder(None)
    out: dict = {"train": {}, "heldout": {}}
    for i, d in enumerate(names):
        out["train"][d] = emb.embed(passages(load_texts(corpora[d]), limit=limit))
        held = passages(load_texts(corpora[d], split="heldout"), limit=per_domain)
        if held:
            out["heldout"][d] = emb.embed(held)
        print(f"{time.strftime('%H:%M:%S')} embedded {i + 1}/{len(names)} {d}", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{part}/{d}": v for part, m in out.items() for d, v in m.items()})
    return out


def lse_scores(sims: np.ndarray, owner: np.ndarray, n: int, t: float = 0.05) -> np.ndarray:
    """[B, N] soft maximum of each member's cosines at temperature t, normalised by its pilot count (the one rule
    compared here that compose/selector.py does not offer: it needs many pilots to pay)."""
    out = np.full((len(sims), n), -np.inf)
    for j in range(n):
        s = sims[:, owner == j]
        m = s.max(1, keepdims=True)
        out[:, j] = m[:, 0] + t * np.log(np.exp((s - m) / t).mean(1))
    return out


def evaluate(emb: dict, names: list[str], num_pilots: int, rule: str, centre: bool) -> dict:
    from expertmesh.compose.selector import PilotIndex
    from expertmesh.expert.signature import pilot_embeddings

    pilots = [pilot_embeddings(emb["train"][d], num_pilots, 0) if num_pilots else emb["train"][d] for d in names]
    owner = np.concatenate([np.full(len(p), j) for j, p in enumerate(pilots)])
    P = np.concatenate(pilots).astype(np.float64)
    mu = P.mean(0) if centre else np.zeros(P.shape[1])

    def norm(x):
        x = x - mu
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-9)

    Pn = norm(P)
    index = None if rule == "lse" else PilotIndex(Pn, owner, len(names), rule=rule)   # the serving rules
    top1, top3 = [], []
    for i, d in enumerate(names):
        if d not in emb["heldout"]:
            continue
        q = norm(emb["heldout"][d].astype(np.float64))
        sc = lse_scores(q @ Pn.T, owner, len(names)) if rule == "lse" else index.scores(q)
        rank = np.argsort(-sc, axis=1, kind="stable")
        top1.append(float(np.mean(rank[:, 0] == i)))
        top3.append(float(np.mean((rank[:, :3] == i).any(1))))
    return {"num_pilots": num_pilots or "all", "rule": rule, "centred": centre,
            "top1": round(float(np.mean(top1)), 4), "top3": round(float(np.mean(top3)), 4), "domains": len(top1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "scale"))
    ap.add_argument("--max-docs", type=int, default=40)
    ap.add_argument("--limit", type=int, default=256, help="training passages per domain")
    ap.add_argument("--passages", type=int, default=32, help="held-out passages per domain")
    ap.add_argument("--pilots", default="8,32,64,0", help="numbers of pilots; 0 = every passage")
    args = ap.parse_args()
    from expertmesh.corpora import build_all
    from expertmesh.corpora.fine import fine_domains
    from scale_quality import UNCOVERED, domain_order

    root = Path(args.work) / "corpora"
    todo = [d for d in fine_domains() if not (root / d / "meta.json").is_file()]
    if todo:
        build_all(todo, root, max_docs=args.max_docs, overwrite=True)
    names = domain_order([d for d in fine_domains() if d not in UNCOVERED])[:64]
    emb = embed_all({d: root / d for d in names}, names, args.limit, args.passages,
                    Path(args.work) / f"routing-emb-{args.limit}-{args.passages}.npz")
    rows = []
    for k in [int(x) for x in args.pilots.split(",")]:
        for centre in (False, True):
            for rule in ("mean", "max", "top3", "lse"):      # PilotIndex's rules, plus a log-sum-exp
                rows.append(evaluate(emb, names, k, rule, centre))
                print(json.dumps(rows[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"domains": len(names), "train_passages": args.limit,
                               "heldout_passages": args.passages, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
