"""Would re-ranking the retriever's candidates by the prompt's likelihood route better? (issue 11, a measurement
of a method the product does not offer yet)

The retriever picks experts by cosine against each owner's pilots; at 64 fine domains its top-1 is ~0.66 while
its top-3 is ~0.85 (BENCHMARKS.md, "Scale"). This scores each held-out passage under each of the retriever's
top-m candidates alone (the candidate behind its gate, one batch row per candidate, as ``include=[c]`` plans it)
and picks the candidate with the lowest mean next-token loss: BTM's likelihood posterior, restricted to the
candidates. It needs only what the composition already holds (the published experts), at m extra prefill rows.

    python benchmarks/routing_rerank.py --work runs/scale          # after scale_bench.py trained the 64 experts

Writes benchmarks/scale-bench/routing_rerank.json and prints retriever vs re-ranked top-1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "scale"))
    ap.add_argument("--n", type=int, default=64, help="members: the first N covered domains of the bench's order")
    ap.add_argument("--m", type=int, default=3, help="retriever candidates re-ranked per passage")
    ap.add_argument("--passages", type=int, default=8, help="held-out passages per domain")
    ap.add_argument("--max-tokens", type=int, default=128, help="passage tokens scored")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "scale-bench" / "routing_rerank.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()

    import scale_quality as q
    from scale_bench import parser as bench_parser, train_configs
    from scale_quality import UNCOVERED

    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition, load_members
    from expertmesh.compose.runtime import CompositionRuntime
    from expertmesh.corpora.fine import fine_domains
    from expertmesh.expert.audit import block_losses
    from expertmesh.expert.cache import cache_key

    work = Path(args.work)
    base = load_base(None)
    corpora = {d: work / "corpora" / d for d in fine_domains()}
    order = q.domain_order([d for d in corpora if d not in UNCOVERED])[:args.n]
    bench = bench_parser().parse_args(["--work", str(work)])        # the experts scale_bench trains by default
    dirs = {c.name: work / "experts" / cache_key(c, base.fingerprint)
            for c in train_configs(bench, corpora, order, None, work)}
    missing = [d for d, p in dirs.items() if not (p / "manifest.json").is_file()]
    if missing:
        raise SystemExit(f"error: {len(missing)} experts not in the cache (first: {missing[0]}); run "
                         "scale_bench.py --part train first")
    spec, tensors = build_composition(f"rerank-{args.n}", dirs, "retrieve", base=base, pilot_score="top3")
    rt = CompositionRuntime(spec, tensors, base, load_members(dirs, base.fingerprint))
    passages = q.heldout_passages({d: corpora[d] for d in order}, args.passages)
    members, tok = rt.member_names, base.tokenizer
    per: dict = {}
    try:
        for d in order:
            if not passages[d]:
                continue
            ranked = np.argsort(-rt._index.scores(rt.embed(passages[d])), axis=1, kind="stable")[:, :args.m]
            own, hits = members.index(d), {"retriever": [], "rerank": [], "in_top_m": []}
            for text, cands in zip(passages[d], ranked):
                ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:args.max_tokens]])
                allowed = torch.zeros(len(cands), len(members), dtype=torch.bool)
                allowed[torch.arange(len(cands)), torch.as_tensor(cands)] = True
                loss = block_losses(lambda x: rt.model(x, allowed=allowed).logits, ids.expand(len(cands), -1),
                                    len(cands))
                hits["retriever"].append(cands[0] == own)
                hits["rerank"].append(cands[int(loss.argmin())] == own)
                hits["in_top_m"].append(own in cands)
            per[d] = {k: round(float(np.mean(v)), 4) for k, v in hits.items()} | {"passages": len(passages[d])}
    finally:
        rt.close()
    mean = {k: round(float(np.mean([p[k] for p in per.values()])), 4) for k in ("retriever", "rerank", "in_top_m")}
    res = {"n_experts": args.n, "m": args.m, "top1": mean, "per_domain": per, "settings": vars(args),
           "seconds": round(time.perf_counter() - t0, 1), "load_average_1min": [round(load0, 2),
                                                                               round(os.getloadavg()[0], 2)],
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/routing_rerank.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"N={args.n}: top-1 retriever {mean['retriever']}, re-ranked by likelihood among its top-{args.m} "
          f"{mean['rerank']} (own expert in the top-{args.m}: {mean['in_top_m']}); {res['seconds']} s")


if __name__ == "__main__":
    main()
