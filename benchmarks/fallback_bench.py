"""Uncovered-domain fallback benchmark: does the retriever's ``min_score`` keep prompts no expert covers on the
public base, and what does it cost on the covered domains?

A ``retrieve`` composition (selection "both", top-m 2) of three experts (law, medicine, code) is evaluated on
held-out blocks of all six corpora: the three covered domains and three no expert covers (literature, computing,
systems). The retriever reads each block's first ``prefix`` tokens as the request's prompt; loss is scored on the
positions after it. For every threshold the script reports, per domain, the share of requests that fell back to
the public base and the held-out loss, next to the base alone and the composition without a threshold.

Run (~5 min of 2 CPU cores; reuses runs/federated-bench's corpora and experts when present, else builds and
trains them into runs/fallback-bench):
    nice .venv/bin/python benchmarks/fallback_bench.py
Writes runs/fallback-bench/results.json and its section of BENCHMARKS.md between
<!-- fallback-bench:start --> and <!-- fallback-bench:end -->.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

COVERED = ("law", "medicine", "code")
UNCOVERED = ("literature", "computing", "systems")
THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def corpus_dir(work: Path, domain: str) -> Path:
    for shared in (ROOT / "runs" / "bench" / "corpora" / domain, ROOT / "runs" / "federated-bench" / "corpora" / domain):
        if (shared / "heldout.jsonl").is_file():
            return shared
    from expertmesh.corpora.build import build_corpus

    if not (work / "corpora" / domain / "heldout.jsonl").is_file():
        build_corpus(domain, work / "corpora", max_docs=60)
    return work / "corpora" / domain


def experts_dir(work: Path) -> Path:
    shared = ROOT / "runs" / "federated-bench" / "experts"
    if all((shared / d / "manifest.json").is_file() for d in COVERED):
        return shared
    from federated_bench import REAL, train_expert_into

    out = work / "experts"
    for d in COVERED:
        if not (out / d / "manifest.json").is_file():
            train_expert_into(out / d, d, corpus_dir(work, d), None, REAL)
    return out


def evaluate(rt, blocks, prefix: int, plan) -> list[float]:
    """Per-block mean loss on positions after ``prefix`` under ``plan``."""
    from router_training.mot_train import lm_loss

    logits = rt.logits(blocks, None, plan)
    return lm_loss(logits, blocks, start=prefix, reduction="none").tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=16, help="held-out blocks per domain")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--prefix", type=int, default=32, help="tokens the retriever reads as the prompt")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.out or ROOT / "runs" / "fallback-bench")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    import torch

    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.runtime import CompositionRuntime
    from router_training.task import load_blocks

    torch.set_grad_enabled(False)
    experts = experts_dir(work)
    comp = work / "comp-retrieve"
    build_composition("fallback", experts, "retrieve", out=comp, overwrite=True, top_m=2, selection="both")
    rt = CompositionRuntime.load(comp, experts, load_base(None))
    tok = rt.base.tokenizer
    results: dict = {"config": vars(args), "thresholds": list(THRESHOLDS), "domains": {}}
    for d in COVERED + UNCOVERED:
        log(f"{d}: embedding and scoring {args.blocks} blocks")
        blocks = load_blocks(tok, corpus_dir(work, d), args.seq_len, split="heldout", max_blocks=args.blocks)
        prompts = [tok.decode(b[:args.prefix], skip_special_tokens=True) for b in blocks]
        rt.spec.min_score = None
        plan = rt.plan(prompts)
        best = [max(s.values()) if s else float("nan") for s in plan.scores]
        base = evaluate(rt, blocks, args.prefix, rt.plan(prompts, include=[]))
        free = evaluate(rt, blocks, args.prefix, plan)
        row = {"best_score": best, "base": base, "retrieve": free, "by_threshold": {},
               "top1": [max(s, key=s.get) for s in plan.scores]}
        for thr in THRESHOLDS:
            rt.spec.min_score = thr
            p = rt.plan(prompts)
            row["by_threshold"][str(thr)] = {"loss": evaluate(rt, blocks, args.prefix, p),
                                             "fallback": sum(p.fallback) / len(p.fallback)}
        results["domains"][d] = row
    rt.close()
    results["total_seconds"] = round(time.time() - t_start, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    results["date"] = dt.date.today().isoformat()
    (work / "results.json").write_text(json.dumps(results, indent=2))
    from benchmarks.mesh.markdown import replace_section

    replace_section(ROOT / "BENCHMARKS.md", "fallback-bench", render(results))
    log(f"wrote {work / 'results.json'} and the fallback-bench section of BENCHMARKS.md")


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def render(r: dict) -> str:
    cfg, doms = r["config"], r["domains"]
    names = list(doms)
    lines = ["## Uncovered domains: the retriever's min_score fallback", "",
             f"Command: `nice .venv/bin/python benchmarks/fallback_bench.py` · machine: {r['machine']} (shared with "
             f"other jobs) · date: {r['date']} · whole run {r['total_seconds'] / 60:.1f} min.", "",
             f"Setup: base SmolLM2-135M-Instruct; a `retrieve` composition (selection both, top-m 2) of the "
             f"federated bench's three experts (law, medicine, code; r=8, 20 steps each). {cfg['blocks']} held-out "
             f"blocks x {cfg['seq_len']} tokens per domain; the retriever reads each block's first {cfg['prefix']} "
             f"tokens as the prompt, loss is scored after them. Literature, computing and systems have no expert.", "",
             "Retriever best score (MiniLM cosine to the nearest member's pilots) per domain: "
             + "; ".join(f"{d} median {sorted(doms[d]['best_score'])[len(doms[d]['best_score']) // 2]:.3f} "
                         f"(min {min(doms[d]['best_score']):.3f}, max {max(doms[d]['best_score']):.3f})"
                         for d in names) + ".", "",
             "Held-out loss (nats/token after the prompt prefix; lower is better), with the share of requests "
             "answered by the public base in brackets:", "",
             f"| method | {' | '.join(names)} | covered mean | uncovered mean |", "|---" * (len(names) + 3) + "|"]

    def row(label, losses: dict, fallback: dict | None = None) -> str:
        cells = [f"{_mean(losses[d]):.4f}" + (f" ({fallback[d]:.0%})" if fallback else "") for d in names]
        cov = _mean([_mean(losses[d]) for d in COVERED])
        unc = _mean([_mean(losses[d]) for d in UNCOVERED])
        return f"| {label} | " + " | ".join(cells) + f" | {cov:.4f} | {unc:.4f} |"

    lines.append(row("public base alone", {d: doms[d]["base"] for d in names}))
    lines.append(row("retrieve, no min_score", {d: doms[d]["retrieve"] for d in names}))
    for thr in r["thresholds"]:
        k = str(thr)
        lines.append(row(f"retrieve, min_score {thr}", {d: doms[d]["by_threshold"][k]["loss"] for d in names},
                         {d: doms[d]["by_threshold"][k]["fallback"] for d in names}))
    base_u = _mean([_mean(doms[d]["base"]) for d in UNCOVERED])
    free_u = _mean([_mean(doms[d]["retrieve"]) for d in UNCOVERED])
    free_c = _mean([_mean(doms[d]["retrieve"]) for d in COVERED])
    lines += ["", "Observations (computed from the table):", "",
              f"- Without a threshold the composition changes the uncovered mean by {free_u - base_u:+.4f} vs the "
              f"public base (covered: {free_c - _mean([_mean(doms[d]['base']) for d in COVERED]):+.4f})."]
    for thr in r["thresholds"]:
        k = str(thr)
        unc = _mean([_mean(doms[d]["by_threshold"][k]["loss"]) for d in UNCOVERED])
        cov = _mean([_mean(doms[d]["by_threshold"][k]["loss"]) for d in COVERED])
        lines.append(f"- min_score {thr}: uncovered {unc - base_u:+.4f} vs base, covered {cov - free_c:+.4f} vs "
                     f"no threshold.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
