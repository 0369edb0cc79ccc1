"""DP-SGD step time: per-sample gradients from one backward per block (the loop expertmesh used before
ComposedModel.per_sample) against one batched backward per micro-batch (expert/dp.py now), interleaved.

    python benchmarks/dp_step_speed.py --data runs/pb-dp2/subsets/law --blocks 32 --reps 3 --threads 1

Both compute the same clipped sum (checked here); prints per-sample tokens/s of each and writes
benchmarks/privacy-bench/dp_step_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def loop_grads(loss_of, ids, params, clip):
    """The earlier method: one backward of batch 1 per block."""
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(ids)):
        grads = torch.autograd.grad(loss_of(ids[i:i + 1]).float(), params)
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
        for t, g in zip(total, grads):
            t.add_(g, alpha=float((clip / (norm + 1e-6)).clamp(max=1.0)))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="corpus dir or .jsonl (its train split is packed into blocks)")
    ap.add_argument("--blocks", type=int, default=32, help="blocks per step (the Poisson batch)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "privacy-bench" / "dp_step_speed.json"))
    args = ap.parse_args()
    from expertmesh.base import load_base
    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.blocks import pack_blocks
    from expertmesh.expert.dp import DPPlan, dp_step
    from expertmesh.expert.signature import public_anchor_rows
    from expertmesh.expert.train import _init_lora
    from expertmesh.mixture.lora_io import ExpertWeights
    from expertmesh.mixture.model import ComposedModel, resolve_targets
    from expertmesh.precision import use_bf16

    torch.set_num_threads(args.threads)
    base = load_base(None)
    model = base.model
    ids = pack_blocks(base.tokenizer, load_texts(args.data), args.seq_len, max_blocks=args.blocks, what="data")
    anchor = public_anchor_rows(base)
    lora = _init_lora(model, resolve_targets(model, ["q_proj", "v_proj"]), args.rank, 0)
    with torch.no_grad():                              # a trained-looking B, so A gets gradients too
        for _, b in lora.values():
            b.normal_(0, 0.01)
    row = nn.Parameter(anchor[:, None, :].clone())
    expert = ExpertWeights(name="e", lora=lora, scaling=2.0, router_rows=anchor, anchor_rows=anchor,
                           pilots=torch.zeros(1, 1))
    composed = ComposedModel(model, [expert], top_k=2, anchor_rows=anchor, expert_rows=row)
    params = [p for pair in lora.values() for p in pair] + [row]
    bf16 = use_bf16(args.precision)

    def loss_of(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return composed(x, labels=x).loss

    plan = DPPlan(epsilon=8.0, delta=1e-5, clip=0.1, noise_multiplier=0.0, sample_rate=1.0, steps=1)
    times = {"loop": [], "batched": []}
    results = {}
    for rep in range(args.reps):
        for method in (("loop", "batched") if rep % 2 == 0 else ("batched", "loop")):
            t0 = time.perf_counter()
            if method == "loop":
                results[method] = loop_grads(loss_of, ids, params, plan.clip)
            else:
                dp_step(loss_of, ids, params, plan, len(ids), torch.Generator().manual_seed(0),
                        per_sample=composed.per_sample)
                results[method] = [p.grad * len(ids) for p in params]
            times[method].append(time.perf_counter() - t0)
    diff = max(float((a - b).abs().max()) for a, b in zip(results["loop"], results["batched"]))
    scale = max(float(a.abs().max()) for a in results["loop"])
    tokens = len(ids) * args.seq_len
    med = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
    out = {"blocks": len(ids), "seq_len": args.seq_len, "rank": args.rank, "precision": "bf16" if bf16 else "fp32",
           "threads": args.threads, "seconds": times, "median_seconds": med,
           "per_sample_tokens_per_s": {m: round(tokens / s, 1) for m, s in med.items()},
           "speedup": round(med["loop"] / med["batched"], 2), "max_abs_diff_clipped_sum": diff,
           "max_abs_clipped_sum": scale,
           "load_average_1min": round(os.getloadavg()[0], 2),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/dp_step_speed.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("per_sample_tokens_per_s", "speedup", "max_abs_diff_clipped_sum",
                                                    "max_abs_clipped_sum")}))


if __name__ == "__main__":
    main()
