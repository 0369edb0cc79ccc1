"""Micro-benchmark (issue 11): selected_delta's strategies against the number of resident experts N.

    nice -n 10 python benchmarks/sparse_bench.py     # ~1.5 min on 1 thread; writes scale-bench/sparse_bench.json
    python benchmarks/sparse_bench.py --reps 3 --n 4,64 --m 64,1  # tiny variant, seconds

One call = one layer's adapted attention projections of SmolLM2-135M: q and o (576 -> 576), k and v (576 -> 192),
LoRA rank 8, each token routed to k=2 distinct experts drawn uniformly from the N resident ones (random weights).
M (tokens per call): 16 rows x 64 prompt tokens = 1024 and 1 x 64 (prefill), 16 and 1 (decode).

All (M, N, strategy) cells run in ONE interleaved loop: each repetition times every cell once, in a shuffled
order, so a change in the machine's load (it is shared) hits every cell alike; the median over repetitions is
reported, with os.getloadavg() before and after. Torch runs on --threads threads (1 by default: the serving
engine's setting in scale_cost.py). fp32 by default (serving); --bf16 times under CPU autocast.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]                      # this checkout's expertmesh first

import torch  # noqa: E402

from expertmesh.mixture.sparse import selected_delta  # noqa: E402

# (name, in, out) of one SmolLM2-135M layer's adapted projections (hidden 576, 3 KV heads x 64 = 192)
MODULES = [("q", 576, 576), ("k", 576, 192), ("v", 576, 192), ("o", 576, 576)]
STRATEGIES = ["gather", "segment", "padded", "auto"]


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", default="1024,64,32,16,1", help="tokens per call")
    ap.add_argument("--n", default="4,16,64", help="resident experts")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15, help="repetitions of the whole interleaved loop")
    ap.add_argument("--inner", type=int, default=3, help="calls per timed sample (the sample is their mean)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "scale-bench" / "sparse_bench.json"))
    return ap.parse_args()


def _case(m: int, n: int, rank: int, top_k: int, seed: int):
    """Inputs for one (M, N): per module (x, w, a_pool, b_pool); the same routing w for every module."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(m, n, generator=g).argsort(-1)[:, :top_k]          # top_k distinct experts per token
    w = torch.zeros(m, n).scatter(-1, keep, torch.rand(m, top_k, generator=g) + 0.1)
    mods = []
    for _, d_in, d_out in MODULES:
        mods.append((torch.randn(m, d_in, generator=g), w,
                     torch.randn(n, rank, d_in, generator=g) * 0.02, torch.randn(n, d_out, rank, generator=g) * 0.02))
    return mods


def _time_once(mods, strategy: str, inner: int, bf16: bool) -> float:
    """Seconds per call (all four modules), the mean of ``inner`` calls."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t0 = time.perf_counter()
        for _ in range(inner):
            for x, w, a, b in mods:
                selected_delta(x, w, a, b, strategy=strategy)
        return (time.perf_counter() - t0) / inner


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    ms, ns = [int(v) for v in args.m.split(",")], [int(v) for v in args.n.split(",")]
    cases = {(m, n): _case(m, n, args.rank, args.top_k, seed=1000 * m + n) for m in ms for n in ns}
    cells = [(m, n, s) for m in ms for n in ns for s in STRATEGIES]
    samples: dict = {c: [] for c in cells}
    for c in cells:                                                     # warm-up, untimed
        _time_once(cases[c[:2]], c[2], 1, args.bf16)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rng = random.Random(0)
    for _ in range(args.reps):
        order = cells[:]
        rng.shuffle(order)
        for c in order:
            samples[c].append(_time_once(cases[c[:2]], c[2], args.inner, args.bf16))
    load_after = os.getloadavg()
    rows = []
    for m, n, s in cells:
        xs = samples[(m, n, s)]
        pairs = int(cases[(m, n)][0][1].count_nonzero())
        experts = int((cases[(m, n)][0][1] != 0).any(0).sum())
        rows.append({"m": m, "n_experts": n, "strategy": s, "pairs": pairs, "selected_experts": experts,
                     "median_ms": round(1e3 * statistics.median(xs), 3), "min_ms": round(1e3 * min(xs), 3),
                     "max_ms": round(1e3 * max(xs), 3)})
    med = {(r["m"], r["n_experts"], r["strategy"]): r["median_ms"] for r in rows}
    print(f"threads={args.threads} bf16={args.bf16} reps={args.reps} inner={args.inner} "
          f"load before {load_before[0]:.2f} after {load_after[0]:.2f} ({time.perf_counter() - t_start:.0f} s)")
    print("median ms per call (q,k,v,o of one layer); last column: N=max over N=min")
    for m in ms:
        for s in STRATEGIES:
            line = "  ".join(f"N={n}: {med[(m, n, s)]:8.3f}" for n in ns)
            print(f"M={m:5d} {s:8s} {line}   x{med[(m, ns[-1], s)] / med[(m, ns[0], s)]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "format": "expertmesh-sparse-bench/1", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threads": args.threads, "bf16_autocast": args.bf16, "rank": args.rank, "top_k": args.top_k,
        "reps": args.reps, "inner": args.inner, "modules": MODULES, "torch": torch.__version__,
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after],
        "unit": "ms per call: the four projections of one layer, median over reps", "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
