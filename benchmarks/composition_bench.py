"""Composition benchmark (issue 4): held-out loss per domain of the composed model against base, single experts,
oracle, PEFT merges and a BTM ensemble, on real corpora with the default base.

Run (SmolLM2-135M, 3 experts of equal budget trained or reused from the cache, ~15-25 min on 2 shared cores):
    nice -n 5 .venv/bin/python benchmarks/composition_bench.py
Tiny CPU variant (a config-built 2-layer model and toy corpora, ~1 min; figures meaningless, checks the pipeline):
    .venv/bin/python benchmarks/composition_bench.py --tiny
Writes its section of BENCHMARKS.md between <!-- composition-bench:start --> and <!-- composition-bench:end -->
(not for --tiny or --no-write) and everything it measured to <work>/results.json.

Budget per expert (defaults): 40 steps x 8 blocks x 128 tokens = 40,960 tokens, LoRA r=16 on q,k,v,o, bf16 autocast.
Evaluation: per domain, the first --eval-blocks blocks of --seq-len tokens of the held-out split (whole held-out
documents); loss = mean next-token cross-entropy over every block token. A request's "prompt" (what the retriever
and the BTM posterior see) is the first --prompt-tokens tokens of its block; the loss still covers the whole block.
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
sys.path.insert(0, str(ROOT))

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data and experts ---------------------------------------------------------------------------------------
def tiny_corpora(root: Path, domains: list[str]) -> dict[str, Path]:
    from expertmesh.corpora.records import write_records
    from expertmesh.testing import TINY_TEXTS

    out = {}
    for d in domains:
        dd = root / d
        dd.mkdir(parents=True, exist_ok=True)
        t = TINY_TEXTS[d]
        write_records(dd / "train.jsonl", [{"id": f"{d}/{i}", "text": t[i % 2]} for i in range(30)])
        write_records(dd / "heldout.jsonl", [{"id": f"{d}/h{i}", "text": " ".join(t)} for i in range(8)])
        out[d] = dd
    return out


def real_corpora(root: Path, domains: list[str], max_docs: int) -> dict[str, Path]:
    from expertmesh.corpora import build_corpus

    out = {}
    for d in domains:
        if not ((root / d) / "heldout.jsonl").is_file():
            log(f"building corpus {d} (max {max_docs} documents)")
            build_corpus(d, root, max_docs=max_docs)
        out[d] = root / d
    return out


def get_expert(args, base, base_spec, d: str, data: Path, cache: Path) -> tuple[Path, dict]:
    """Train one expert or reuse the cached one made with the same config, data and base."""
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert
    from expertmesh.fileio import sha256_file

    targets = ["q_proj", "v_proj"] if args.tiny else ["q_proj", "k_proj", "v_proj", "o_proj"]
    cfg = TrainConfig(name=d, owner=f"{d}-owner", data=str(data), out="unused", base=base_spec, domain_tags=[d],
                      steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed,
                      lora=LoraSpec(r=args.rank, alpha=2.0 * args.rank, target_modules=targets),
                      num_pilots=2 if args.tiny else 8, eval_blocks=4, overwrite=True, resume=False)
    key = f"{d}-{cfg.digest()}-{base.fingerprint[:12]}-{sha256_file(Path(data) / 'train.jsonl')[:12]}"
    out = cache / key
    if (out / "manifest.json").is_file():
        log(f"expert {d}: reusing {out.name}")
        m = json.loads((out / "manifest.json").read_text())
        return out, {"cached": True, **{k: m["training"].get(k) for k in ("seconds_this_run", "tokens_per_second",
                                                                           "first_loss", "final_loss", "precision")}}
    cfg.out = str(out)
    log(f"expert {d}: training {args.steps} steps x {args.batch_size} x {args.seq_len} tokens")
    t0 = time.perf_counter()
    res = train_expert(cfg, base=base, progress=False)
    tr = res.manifest.training
    log(f"expert {d}: {time.perf_counter() - t0:.0f} s, loss {tr['first_loss']} -> {tr['final_loss']}")
    return out, {"cached": False, **{k: tr.get(k) for k in ("seconds_this_run", "tokens_per_second", "first_loss",
                                                             "final_loss", "precision")}}


# -- evaluation ---------------------------------------------------------------------------------------------
def target_logprobs(logits_fn, blocks, prompts, batch_size: int):
    """[n, T-1] log-prob of each next token; logits_fn(ids, prompts) -> [b, T, V]."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size]
            logp = torch.log_softmax(logits_fn(ids, prompts[i:i + batch_size]).float(), -1)
            out.append(logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0])
    return torch.cat(out)


class Evaluator:
    def __init__(self, args, blocks, prompts):
        self.args, self.blocks, self.prompts = args, blocks, prompts
        self.losses: dict[str, dict[str, float]] = {}
        self.seconds: dict[str, float] = {}
        self.lp: dict[str, dict] = {}          # method -> domain -> [n, T-1] target log-probs

    def run(self, method: str, logits_fn, keep: bool = False) -> None:
        t0 = time.perf_counter()
        self.losses[method] = {}
        for d in self.blocks:
            lp = target_logprobs(logits_fn, self.blocks[d], self.prompts[d], self.args.eval_batch)
            self.losses[method][d] = round(-float(lp.mean()), 4)
            if keep:
                self.lp.setdefault(method, {})[d] = lp
        self.seconds[method] = round(time.perf_counter() - t0, 1)
        log(f"{method:<42} " + "  ".join(f"{d} {v:.3f}" for d, v in self.losses[method].items())
            + f"  ({self.seconds[method]:.0f} s)")


def routing_heatmap(rt, blocks, prompts, batch_size: int, plan_fn) -> dict[str, dict[str, float]]:
    """Mean gate mass per true domain (rows) and gate entry (columns), over block tokens and layers."""
    import torch

    heat = {}
    with torch.inference_mode():
        for d in blocks:
            total, n = None, 0
            for i in range(0, len(blocks[d]), batch_size):
                ids = blocks[d][i:i + batch_size]
                rt.forward(ids, None, plan_fn(prompts[d][i:i + batch_size]), trace=True)
                m = rt.model.last_trace.mass.sum(0)
                total, n = (m if total is None else total + m), n + len(ids)
            heat[d] = {e: round(float(total[j] / n), 3) for j, e in enumerate(rt.model.entries)}
    return heat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", nargs="+", default=["law", "medicine", "code"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-docs", type=int, default=400)
    ap.add_argument("--eval-blocks", type=int, default=24)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--work", default=str(ROOT / "runs" / "composition-bench"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()

    import torch

    from expertmesh.base import load_base
    from expertmesh.compose import CompositionRuntime, build_composition
    from expertmesh.compose.baselines import MergedModel, domain_posterior, merge_experts, mix_logprobs
    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.blocks import pack_blocks

    t_start = time.perf_counter()
    work = Path(args.work) / ("tiny" if args.tiny else "real")
    base_spec = None
    if args.tiny:
        from expertmesh.testing import make_tiny_base

        base_spec = str(make_tiny_base(work / "tiny-base"))
        args.steps, args.batch_size, args.seq_len, args.eval_blocks, args.rank = 20, 4, 32, 4, 4
        args.prompt_tokens = 8
    base = load_base(base_spec)
    tok = base.tokenizer
    corpora = tiny_corpora(work / "corpora", args.domains) if args.tiny else \
        real_corpora(work / "corpora", args.domains, args.max_docs)
    experts, train_info = {}, {}
    for d in args.domains:
        experts[d], train_info[d] = get_expert(args, base, base_spec, d, corpora[d], work / "experts")

    blocks = {d: pack_blocks(tok, load_texts(str(corpora[d] / "heldout.jsonl")), args.seq_len,
                             max_blocks=args.eval_blocks, what=f"{d} held-out") for d in args.domains}
    prompts = {d: tok.batch_decode(b[:, :args.prompt_tokens], skip_special_tokens=True) for d, b in blocks.items()}
    comps = work / "compositions"
    specs = {
        "domain-k1": dict(router_type="domain", top_k=1),
        "domain-k2": dict(router_type="domain", top_k=2),
        "retrieve-m1": dict(router_type="retrieve", top_m=1, top_k=2),
        "retrieve-m2": dict(router_type="retrieve", top_m=2, top_k=2),
        "sequence-m2": dict(router_type="retrieve", top_m=2, selection="sequence"),
    }
    for name, kw in specs.items():
        build_composition(name, experts, kw.pop("router_type"), out=comps / name, overwrite=True, base=base, **kw)

    ev = Evaluator(args, blocks, prompts)
    names = list(args.domains)
    routing: dict = {}

    def plan_logits(rt, **plan_kw):
        return lambda ids, p: rt.logits(ids, None, rt.plan(p, **plan_kw))

    # 1. on the domain top-2 composition: base, every expert alone (its own 2-way gate), the token router
    rt = CompositionRuntime.load(comps / "domain-k2", experts, base)
    ev.run("base (public model)", plan_logits(rt, exclude=names, selection="token"))
    for j in names:
        ev.run(f"expert {j} alone", plan_logits(rt, include=[j], selection="token"), keep=True)
    ev.run("composition: domain router, top-2", plan_logits(rt))
    routing["domain router top-2: gate mass (rows: true domain)"] = routing_heatmap(
        rt, blocks, prompts, args.eval_batch, lambda p: rt.plan(p))
    # BTM: p(x) = sum_j P(j | prompt) p_j(x), posterior from the retriever scores (softmax(score / 0.05))
    t0 = time.perf_counter()
    ev.losses["BTM ensemble (retriever posterior)"] = {}
    posts = {}
    for d in names:
        post = domain_posterior(rt, prompts[d])                                   # [n, N]
        posts[d] = post
        lps = torch.stack([ev.lp[f"expert {j} alone"][d] for j in names], 0)      # [N, n, T-1]
        mix = mix_logprobs(lps, torch.log(post.t().clamp_min(1e-30))[..., None])
        ev.losses["BTM ensemble (retriever posterior)"][d] = round(-float(mix.mean()), 4)
    ev.seconds["BTM ensemble (retriever posterior)"] = round(time.perf_counter() - t0, 1)
    routing["retriever posterior P(expert | prompt) (rows: true domain)"] = {
        d: {j: round(float(posts[d][:, k].mean()), 3) for k, j in enumerate(names)} for d in names}
    ev.losses["oracle (true domain's expert)"] = {d: ev.losses[f"expert {d} alone"][d] for d in names}
    rt.close()

    # 2. other compositions
    for name, label in (("domain-k1", "composition: domain router, top-1"),
                        ("retrieve-m1", "composition: retrieve top-1 -> token gate"),
                        ("retrieve-m2", "composition: retrieve top-2 -> token gate"),
                        ("sequence-m2", "composition: retrieve top-2, sequence-level only")):
        rt = CompositionRuntime.load(comps / name, experts, base)
        ev.run(label, plan_logits(rt))
        if name == "domain-k1":
            routing["domain router top-1: gate mass (rows: true domain)"] = routing_heatmap(
                rt, blocks, prompts, args.eval_batch, lambda p, rt=rt: rt.plan(p))
        if name == "retrieve-m1":
            hits = {d: [rt.plan(p).candidates[0][:1] for p in prompts[d]] for d in names}
            routing["retriever top-1 accuracy"] = {
                d: round(sum(c == [d] for c in hits[d]) / len(hits[d]), 3) for d in names}
        rt.close()

    # 3. PEFT merges, applied in full like a plain PEFT adapter
    for label, kw in (("uniform merge (PEFT cat, weights 1/N)", dict(combination_type="cat")),
                      ("TIES merge (PEFT ties, density 0.5, weights 1)",
                       dict(combination_type="ties", density=0.5, weights=[1.0] * len(names)))):
        merged = merge_experts(base.model, experts, **kw)
        mm = MergedModel(base.model, merged)
        ev.run(label, lambda ids, p, mm=mm: mm.logits(ids))
        mm.close()

    total_min = (time.perf_counter() - t_start) / 60
    results = {"args": vars(args), "losses": ev.losses, "seconds": ev.seconds, "routing": routing,
               "training": train_info, "base_fingerprint": base.fingerprint, "minutes": round(total_min, 1)}
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    body = report(args, ev, routing, train_info, base, total_min)
    print(body)
    if not args.no_write and not args.tiny:
        from benchmarks.mesh.markdown import replace_section

        replace_section(ROOT / "BENCHMARKS.md", "composition-bench", body)
        log("wrote the composition-bench section of BENCHMARKS.md")


ORDER = ["base (public model)", "expert law alone", "expert medicine alone", "expert code alone",
         "oracle (true domain's expert)", "uniform merge (PEFT cat, weights 1/N)",
         "TIES merge (PEFT ties, density 0.5, weights 1)", "BTM ensemble (retriever posterior)",
         "composition: domain router, top-1", "composition: domain router, top-2",
         "composition: retrieve top-1 -> token gate", "composition: retrieve top-2 -> token gate",
         "composition: retrieve top-2, sequence-level only"]


def report(args, ev, routing, train_info, base, total_min) -> str:
    import torch

    names = list(args.domains)
    methods = [m for m in ORDER if m in ev.losses] + [m for m in ev.losses if m not in ORDER]
    best = {d: min(ev.losses[m][d] for m in methods) for d in names}
    cmd = "nice -n 5 .venv/bin/python benchmarks/composition_bench.py " + " ".join(sys.argv[1:])
    tokens = args.steps * args.batch_size * args.seq_len
    lines = [
        "## Composition vs baselines: held-out loss per domain (issue 4)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Date: {dt.date.today()}; machine: {os.cpu_count()} cores ({platform.machine()}, shared with other jobs), "
        f"torch {torch.__version__}; base {'tiny config-built model' if args.tiny else 'SmolLM2-135M-Instruct'} "
        f"(fingerprint {base.fingerprint[:12]}); "
        f"whole run {total_min:.0f} min.  ",
        f"Experts: {', '.join(names)}, one per domain, equal budget {args.steps} steps x {args.batch_size} x "
        f"{args.seq_len} tokens = {tokens:,} tokens each, LoRA r={args.rank} on {'q,v' if args.tiny else 'q,k,v,o'} "
        f"({', '.join(str(train_info[d].get('precision')) for d in names)}); corpora capped at {args.max_docs} "
        f"documents per domain. Held-out: {args.eval_blocks} blocks x {args.seq_len} tokens per domain from "
        f"held-out documents; the retriever/BTM prompt is each block's first {args.prompt_tokens} tokens.  ",
        "Cells: mean next-token loss (perplexity); **bold** = best in the column. \"alone\" = the expert behind "
        "the 2-way gate with the public row it was trained with; merges are applied in full (plain PEFT).",
        "",
        "| method | " + " | ".join(names) + " | mean loss | eval time |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for m in methods:
        cells = []
        for d in names:
            v = ev.losses[m][d]
            c = f"{v:.3f} ({math.exp(v):.1f})"
            cells.append(f"**{c}**" if v == best[d] else c)
        mean = sum(ev.losses[m][d] for d in names) / len(names)
        secs = ev.seconds.get(m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean:.3f} | "
                     + (f"{secs:.0f} s" if secs is not None else "from the rows above") + " |")
    for title, table in routing.items():
        lines += ["", f"{title}:", ""]
        if all(isinstance(v, dict) for v in table.values()):
            cols = list(next(iter(table.values())))
            lines += ["| domain | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
            lines += [f"| {d} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |" for d, row in table.items()]
        else:
            lines.append(", ".join(f"{d} {v:.2f}" for d, v in table.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
