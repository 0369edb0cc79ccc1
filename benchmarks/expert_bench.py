"""Owner-side benchmark: train real experts on real corpora, report held-out loss of base vs expert.

Run (default base SmolLM2-135M, ~10 min on 2 cores):
    .venv/bin/python benchmarks/expert_bench.py --domains law medicine
Tiny CPU variant (seconds, tiny config-built model; figures meaningless, checks the pipeline):
    .venv/bin/python benchmarks/expert_bench.py --tiny
Writes its section of BENCHMARKS.md between <!-- expert-bench:start --> and <!-- expert-bench:end -->.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", nargs="+", default=["law", "medicine"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-docs", type=int, default=400)
    ap.add_argument("--eval-blocks", type=int, default=24)
    ap.add_argument("--work", default=str(ROOT / "runs" / "expert-bench"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()

    from expertmesh.base import load_base
    from expertmesh.corpora import build_corpus
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.evaluate import evaluate_expert
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    work = Path(args.work)
    base_spec = None
    if args.tiny:
        from expertmesh.testing import make_tiny_base
        base_spec = str(make_tiny_base(work / "tiny-base"))
        args.steps, args.batch_size, args.seq_len, args.max_docs, args.eval_blocks = 4, 2, 32, 20, 2
    base = load_base(base_spec)
    corpora = {}
    for d in args.domains:
        out = work / "corpora" / d
        if not (out / "meta.json").is_file():
            build_corpus(d, work / "corpora", max_docs=args.max_docs)
        corpora[d] = out
    rows, results = [], {}
    for d in args.domains:
        out = work / "experts" / d
        cfg = TrainConfig(name=d, owner=f"{d}-owner", data=str(corpora[d]), out=str(out), base=base_spec,
                          domain_tags=[d], steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                          lora=LoraSpec(r=16, alpha=32), eval_blocks=args.eval_blocks, overwrite=True)
        t0 = time.perf_counter()
        res = train_expert(cfg, base=base, progress=False)
        secs = time.perf_counter() - t0
        results[d] = {"train_seconds": round(secs, 1), "training": res.manifest.training, "eval": {}}
        for e in args.domains:
            ev = evaluate_expert(out, corpora[e], base=base, seq_len=args.seq_len, max_blocks=args.eval_blocks)
            results[d]["eval"][e] = ev
            rows.append((d, e, ev["base_loss"], ev["expert_loss"]))
            print(f"expert {d:10s} on {e:10s}: base {ev['base_loss']:.3f} -> expert {ev['expert_loss']:.3f}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    cmd = "python benchmarks/expert_bench.py " + " ".join(sys.argv[1:])
    tok = args.steps * args.batch_size * args.seq_len
    lines = [
        "## Owner-side experts: held-out loss, base vs expert (issue 2)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Date: {dt.date.today()}; machine: {os.cpu_count()} cores, {platform.machine()}, torch "
        f"{__import__('torch').__version__}; base: {'tiny config-built' if args.tiny else 'SmolLM2-135M-Instruct'} "
        f"(fingerprint {base.fingerprint[:12]}).  ",
        f"Budget per expert: {args.steps} steps x {args.batch_size} x {args.seq_len} tokens = {tok:,} tokens, "
        f"LoRA r=16 on q,k,v,o, corpora capped at {args.max_docs} documents, held-out = whole documents "
        f"({args.eval_blocks} blocks of {args.seq_len} tokens). Expert = gated with the public base, as trained.",
        "",
        "| expert | train time | tokens/s | eval domain | base loss | expert loss | base ppl | expert ppl | change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d, e, bl, el in rows:
        tr = results[d]["training"]
        lines.append(f"| {d} | {results[d]['train_seconds']:.0f} s | {tr.get('tokens_per_second')} | {e} | {bl:.3f} | "
                     f"{el:.3f} | {math.exp(bl):.1f} | {math.exp(el):.1f} | {100 * (el - bl) / bl:+.1f}% |")
    lines += ["", "Own-domain rows show specialisation; cross-domain rows show what an expert costs elsewhere, "
              "which is why composition routes rather than merges."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write and not args.tiny:
        from benchmarks.mesh.markdown import replace_section

        replace_section(ROOT / "BENCHMARKS.md", "expert-bench", body)


if __name__ == "__main__":
    main()
