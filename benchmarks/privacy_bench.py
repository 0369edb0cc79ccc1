"""What leaves an owner: the leakage audit of real experts, with and without DP-SGD, on real corpora.

For each domain, a small training set (so the expert sees each block several times and can memorise), K canaries
planted, experts trained at epsilon in {inf, 8, 1}; each audited (expertmesh/expert/audit.py) against the base.
Rows go to benchmarks/privacy-bench/results.json ({"format": "expertmesh-privacy/1", "rows": [...]}) and a
BENCHMARKS.md section "What leaves an owner". Results are cached per (domain, model) under --work, so an
interrupted run resumes where it stopped.

Run (SmolLM2-135M; ~40 min on 2 shared cores at the defaults):
    nohup nice -n 10 .venv/bin/python benchmarks/privacy_bench.py > runs/privacy-bench.log 2>&1 &
Tiny CPU variant (a minute, tiny config-built model; figures meaningless, checks the pipeline):
    .venv/bin/python benchmarks/privacy_bench.py --tiny --no-write
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FORMAT = "expertmesh-privacy/1"


def _args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", nargs="+", default=["medicine", "law"])
    ap.add_argument("--epsilons", nargs="+", default=["inf", "8", "1"])
    ap.add_argument("--train-blocks", type=int, default=48, help="training set size, in blocks of --seq-len")
    ap.add_argument("--corpus-docs", type=int, default=600,
                    help="documents per domain corpus the training and held-out sets are cut from (raise it for "
                         "large --train-blocks; a corpus already built under --work is kept)")
    ap.add_argument("--heldout-blocks", type=int, default=48)
    ap.add_argument("--steps", type=int, default=36)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of every expert (DP's noise grows with the "
                    "number of trained values, so DP experts do better with fewer)")
    ap.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj"])
    ap.add_argument("--canaries", type=int, default=4)
    ap.add_argument("--canary-repeats", type=int, default=8)
    ap.add_argument("--dp-delta", type=float, default=1e-5)
    ap.add_argument("--dp-clip", type=float, default=1.0)
    ap.add_argument("--dp-freeze-lora-a", action="store_true",
                    help="DP experts train only B (FFA-LoRA: A stays at its random init); the non-DP expert trains both")
    ap.add_argument("--extraction-samples", type=int, default=24)
    ap.add_argument("--mia-blocks", type=int, default=48)
    ap.add_argument("--canary-candidates", type=int, default=300)
    ap.add_argument("--work", default=str(ROOT / "runs" / "privacy-bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "privacy-bench" / "results.json"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a crowded machine; "
                    "run one process per domain/epsilon with --domains D --epsilons E --no-write --skip-secagg, "
                    "then once more with everything to collect)")
    ap.add_argument("--secagg-owners", type=int, default=3)
    ap.add_argument("--secagg-rounds", type=int, default=2)
    ap.add_argument("--skip-secagg", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md and results.json alone")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: report the cached rows (a missing one is listed as not yet measured)")
    ap.add_argument("--section", default="privacy-bench",
                    help="BENCHMARKS.md section this run rewrites (another name adds a section beside the default)")
    ap.add_argument("--title", default="What leaves an owner", help="heading of that section")
    return ap.parse_args()


def _subset(src: Path, dst: Path, tokenizer, train_tokens: int, heldout_tokens: int) -> Path:
    """First documents of each split up to the token budget (whole documents; the split stays by document)."""
    from expertmesh.corpora.records import read_records, write_records

    dst.mkdir(parents=True, exist_ok=True)
    for split, budget in (("train", train_tokens), ("heldout", heldout_tokens)):
        picked, n = [], 0
        for r in read_records(src / f"{split}.jsonl"):
            if n >= budget:
                break
            picked.append(r)
            n += len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1
        write_records(dst / f"{split}.jsonl", picked)
    return dst


def _row(domain: str, model: str, a: dict, side: str, extra: dict) -> dict:
    return {"domain": domain, "model": model, "extraction_rate": a[f"extraction_rate_{side}"],
            "mia_auc": a[f"mia_auc_{side}"], "mia_auc_calibrated": a["mia_auc_calibrated"] if side == "expert" else None,
            "canary_exposure": a.get(f"canary_exposure_{side}"), "heldout_loss": a[f"heldout_loss_{side}"],
            "train_loss": a[f"train_loss_{side}"], "extraction_mean_match": a[f"extraction_mean_match_{side}"],
            **extra}


def main() -> None:
    args = _args()
    import torch

    from expertmesh.base import load_base
    from expertmesh.corpora import build_corpus
    from expertmesh.expert.audit import AuditConfig, audit_expert, record_audit
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    base_spec = None
    if args.tiny:
        from expertmesh.testing import make_tiny_base
        base_spec = str(make_tiny_base(work / "tiny-base"))
        args.train_blocks, args.heldout_blocks, args.steps, args.seq_len = 24, 24, 4, 32
        args.extraction_samples, args.mia_blocks, args.canary_candidates = 8, 16, 20
        args.rank, args.targets = 4, ["q_proj", "v_proj"]
    base = load_base(base_spec)
    cache = {}
    for f in sorted(work.glob("partial-*.json")):   # one file per (domain, model): processes may run side by side
        cache.update({k: v for k, v in json.loads(f.read_text()).items() if k.split("/")[0] in args.domains})
    t_start = time.time()
    lora = LoraSpec(r=args.rank, alpha=2.0 * args.rank, target_modules=list(args.targets))
    audit_cfg = AuditConfig(extraction_samples=args.extraction_samples, mia_blocks=args.mia_blocks,
                            canary_candidates=args.canary_candidates, **({"prefix_tokens": 4, "continuation_tokens": 8,
                                                                         "match_tokens": 6} if args.tiny else {}))
    data = {}
    for d in args.domains:
        full = work / "corpora" / d
        if not (full / "meta.json").is_file():
            build_corpus(d, work / "corpora", max_docs=args.corpus_docs)
        data[d] = _subset(full, work / "subsets" / d, base.tokenizer, args.train_blocks * args.seq_len,
                          (args.heldout_blocks + 8) * args.seq_len)
    for eps in args.epsilons:
        for d in args.domains:
            model = "expert" if eps == "inf" else f"expert-dp-eps{eps}"
            key = f"{d}/{model}"
            if key in cache or args.collect_only:
                continue
            out = work / "experts" / f"{d}-{model}"
            cfg = TrainConfig(name=f"{d}-{model}"[:64], owner=f"{d}-owner", data=str(data[d]), out=str(out),
                              base=base_spec, lora=lora, steps=args.steps, batch_size=args.batch_size,
                              seq_len=args.seq_len, lr=args.lr, warmup_steps=2, eval_blocks=8,
                              canaries=args.canaries, canary_repeats=args.canary_repeats,
                              dp_epsilon=None if eps == "inf" else float(eps), dp_delta=args.dp_delta,
                              dp_clip=args.dp_clip, train_lora_a=not (args.dp_freeze_lora_a and eps != "inf"),
                              overwrite=True, resume=False, checkpoint_every=10_000)
            t0 = time.time()
            res = train_expert(cfg, base=base, progress=False)
            t_train = time.time() - t0
            t0 = time.time()
            a = audit_expert(out, data[d], base=base, cfg=audit_cfg)
            t_audit = time.time() - t0
            record_audit(out, a)
            tr = res.manifest.training
            cache[key] = {"audit": a, "train_tokens": tr["tokens"], "train_seconds": round(t_train, 1),
                          "audit_seconds": round(t_audit, 1), "train_blocks": tr["train_blocks"],
                          "dp": tr.get("dp"), "load_avg": os.getloadavg()}
            cache_file = work / f"partial-{d}-{model}.json"
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({key: cache[key]}, indent=1))
            print(f"[{time.time() - t_start:7.0f}s] {key}: train {t_train:.0f}s audit {t_audit:.0f}s "
                  f"load {os.getloadavg()[0]:.1f} -> {json.dumps({k: v for k, v in a.items() if k[0] in 'cehm'})}",
                  flush=True)
    rows = []
    for d in args.domains:
        first = next((cache[f"{d}/{m}"] for m in ("expert", "expert-dp-eps8", "expert-dp-eps1")
                      if f"{d}/{m}" in cache), None)
        if first is None:
            continue
        rows.append(_row(d, "base", first["audit"], "base", {}))
        for eps in args.epsilons:
            model = "expert" if eps == "inf" else f"expert-dp-eps{eps}"
            c = cache.get(f"{d}/{model}")
            if c is None:
                continue
            dp = c["dp"] or {}
            rows.append(_row(d, model, c["audit"], "expert", {
                "epsilon": dp.get("epsilon", math.inf if eps == "inf" else None), "delta": dp.get("delta"),
                "noise_multiplier": dp.get("noise_multiplier"), "clipping_norm": dp.get("clipping_norm"),
                "train_tokens": c["train_tokens"], "train_blocks": c["train_blocks"],
                "train_seconds": c["train_seconds"], "audit_seconds": c["audit_seconds"]}))
    secagg = None if args.skip_secagg else _secagg_costs(work, base, args)
    for r in rows:
        if r.get("epsilon") == math.inf:
            r["epsilon"] = "inf"
    result = {"format": FORMAT, "rows": rows, "gain_kept": _gain_kept(rows), "secure_aggregation": secagg,
              "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "no_write")},
              "audit_settings": audit_cfg.__dict__, "seconds": round(time.time() - t_start, 1),
              "expert_seconds": round(sum(r.get("train_seconds", 0) + r.get("audit_seconds", 0) for r in rows), 1),
              "missing": [f"{d}/{'expert' if e == 'inf' else 'expert-dp-eps' + e}" for d in args.domains
                          for e in args.epsilons if f"{d}/{'expert' if e == 'inf' else 'expert-dp-eps' + e}" not in cache],
              "load_avg_end": os.getloadavg(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}}
    print(json.dumps(result, indent=1))
    if args.no_write:
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    from benchmarks.mesh.markdown import replace_section

    replace_section(ROOT / "BENCHMARKS.md", args.section, _markdown(result, shlex.join(sys.argv[1:]), args.title,
                                                                    Path(args.out)))


def _secagg_costs(work: Path, base, args) -> dict:
    """Time and payload bytes per round of SecAgg+ vs plain Flower FedAvg, on arrays the size of a router over
    ``secagg_owners`` members of this base ([L, N, d] rows + [N+1] bias). The owners' update is a fixed cheap
    step, so the figures are the protocol's cost alone (local training time is the same either way)."""
    import numpy as np

    from router_training.secagg import SecAggConfig, run_secure

    cached = work / "secagg.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    L, d, n = base.num_layers, base.hidden_size, args.secagg_owners
    rng = np.random.default_rng(0)
    initial = {"expert_rows": rng.standard_normal((L, n, d)).astype(np.float32) * 0.1,
               "bias": np.zeros(n + 1, dtype=np.float32)}

    def update(pid, arrays, server_round):
        return {k: v + np.float32(0.01 * (pid + 1)) for k, v in arrays.items()}, 1000 * (pid + 1)
    cfg = SecAggConfig(max_weight=1000.0 * n)
    out = {"owners": n, "rounds": args.secagg_rounds, "floats": int(sum(v.size for v in initial.values())),
           "settings": {k: v for k, v in cfg.__dict__.items()}, "tolerance": cfg.tolerance([1000 * (i + 1) for i in range(n)])}
    aggregates = {}
    for secure in (False, True):
        stats = run_secure(initial, update, num_owners=n, num_rounds=args.secagg_rounds, cfg=cfg, secure=secure)
        key = "secagg" if secure else "plain"
        out[key] = [{"round": s.round, "seconds": s.seconds, "bytes_up": s.bytes_up, "bytes_down": s.bytes_down,
                     "messages": s.messages} for s in stats]
        aggregates[key] = stats[-1].aggregate
    out["max_abs_diff"] = float(max(np.abs(aggregates["secagg"][k] - aggregates["plain"][k]).max() for k in initial))
    out["load_avg"] = os.getloadavg()
    cached.write_text(json.dumps(out, indent=1))
    return out


def _gain_kept(rows: list[dict]) -> dict:
    """Per domain and DP model: (base - dp held-out loss) / (base - non-DP expert held-out loss)."""
    out = {}
    for d in {r["domain"] for r in rows}:
        by = {r["model"]: r for r in rows if r["domain"] == d}
        if "base" in by and "expert" in by:
            gain = by["base"]["heldout_loss"] - by["expert"]["heldout_loss"]
            for m, r in by.items():
                if m.startswith("expert-dp") and gain > 0:
                    out[f"{d}/{m}"] = round((by["base"]["heldout_loss"] - r["heldout_loss"]) / gain, 3)
    return out


def _markdown(res: dict, argv: str, title: str, out: Path) -> str:
    s = res["settings"]
    fmt = lambda v, p=4: "–" if v is None else (v if isinstance(v, str) else f"{v:.{p}f}")  # noqa: E731
    # runs before --rank/--targets existed used r=16 on q,k,v,o
    targets = s.get("targets", ["q", "k", "v", "o"])
    shape = f"r={s.get('rank', 16)} " + ",".join(t.removesuffix("_proj") for t in targets)
    lines = [f"## {title}", "",
             f"`python benchmarks/privacy_bench.py {argv}`".replace(" `", "`"), "",
             f"SmolLM2-135M base; per domain a training set of {s['train_blocks']} blocks x {s['seq_len']} tokens "
             f"(whole documents of the real corpus) plus {s['canaries']} canaries x {s['canary_repeats']} insertions; "
             f"LoRA {shape}, {s['steps']} steps x batch {s['batch_size']} (DP: Poisson batches of expected "
             f"size {s['batch_size']}), lr {s['lr']}; DP-SGD with per-sample clipping C={s['dp_clip']}, "
             f"delta={s['dp_delta']}, epsilon from Opacus' RDP accountant"
             f"{'; DP experts train only B (FFA-LoRA, A frozen at its random init)' if s.get('dp_freeze_lora_a') else ''}"
             f". Audit: {s['extraction_samples']} "
             f"extraction windows (32-token prefix, 64 greedy tokens, hit = >= 50 leading tokens verbatim), "
             f"{s['mia_blocks']} member vs held-out blocks for the MIA AUC, {s['canary_candidates']} random "
             f"secrets for canary exposure (bits; log2|R| = 29.9). Held-out loss is on the MIA's held-out blocks.", "",
             "| domain | model | epsilon | train tokens | extraction | MIA AUC | MIA AUC calibrated | canary exposure "
             "| held-out loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['domain']} | {r['model']} | {fmt(r.get('epsilon'), 2)} | {r.get('train_tokens', '–')} | "
                     f"{fmt(r['extraction_rate'], 3)} | {fmt(r['mia_auc'], 3)} | {fmt(r['mia_auc_calibrated'], 3)} | "
                     f"{fmt(r['canary_exposure'], 2)} | {fmt(r['heldout_loss'])} |")
    if res.get("missing"):
        lines += ["", f"**Partial run**: not yet measured: {', '.join(res['missing'])}."]
    sa = res.get("secure_aggregation")
    if sa:
        # Round 1 also starts the simulation's Ray actors: average the later rounds where there are any.
        steady = lambda k: sa[k][1:] or sa[k]  # noqa: E731
        per = lambda k, f: sum(r[f] for r in steady(k)) / len(steady(k))  # noqa: E731
        lines += ["", f"Secure aggregation (Flower SecAgg+, `router_training/secagg.py`), {sa['owners']} owners, "
                  f"{sa['floats']:,} floats (router rows + bias of a {sa['owners']}-member composition), mean of "
                  f"rounds 2..{sa['rounds']} (round 1 also starts the Ray actors); the owners' update is a fixed step so the figures are the protocol's "
                  "own cost:", "", "| aggregation | s / round | bytes up / round | bytes down / round | messages |",
                  "|---|---|---|---|---|"]
        for k in ("plain", "secagg"):
            lines.append(f"| {'plain FedAvg' if k == 'plain' else 'SecAgg+'} | {per(k, 'seconds'):.1f} | "
                         f"{per(k, 'bytes_up'):,.0f} | {per(k, 'bytes_down'):,.0f} | {per(k, 'messages'):.0f} |")
        lines += ["", f"SecAgg+ aggregate vs plain FedAvg: max |difference| {sa['max_abs_diff']:.2e} (quantisation "
                  f"bound {sa['tolerance']:.2e}; clipping range {sa['settings']['clipping_range']}, "
                  f"{sa['settings']['quantization_range']} levels)."]
    lines += ["", "Share of the non-DP expert's held-out gain over the base that each DP expert keeps: "
              + (", ".join(f"{k} {v:.0%}" for k, v in sorted(res["gain_kept"].items())) or "–") + ".", "",
              f"Train + audit time summed over the experts {res['expert_seconds'] / 60:.1f} min "
              f"({s.get('threads') or 'all'} torch thread(s); per row in the raw file); load average at the "
              "collect step "
              f"{', '.join(f'{x:.1f}' for x in res['load_avg_end'])} (2 cores, shared). Raw rows: "
              f"{out.relative_to(ROOT) if out.is_absolute() and out.is_relative_to(ROOT) else out}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
