"""Scale bench (issue 11): many owners over fine-grained real domains; serving cost against the number of experts.

    python benchmarks/scale_bench.py --part quality        # 64 real experts over the fine domains, N in 4/16/64
    python benchmarks/scale_bench.py --part cost           # tokens/s, RSS, build/load, cold TTFT for N up to 1024
    python benchmarks/scale_bench.py --tiny                # both parts on a config-built model, seconds (tests)

Quality (scale_quality.py): experts of the same budget (steps x batch x seq_len tokens each), trained once and
cached by config digest under <work>/experts (a rerun retrains nothing); corpora from ``expertmesh data build
--domain fine``. Cost (scale_cost.py): real-format packages; N > the number of real experts are derived
(copies of real packages with perturbed factors and their own signature rows), which the rows say (real=false).

Writes benchmarks/scale-bench/results.json ({"format": "expertmesh-scale/1", "rows": [...]}, one row per N,
each part filling its own fields), details.json (per-domain figures), PNG plots and the BENCHMARKS.md section.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]     # this checkout's expertmesh first
OUT = ROOT / "benchmarks" / "scale-bench"
ROW_KEYS = ["n_experts", "real", "routing_top1", "routing_top3", "composed_over_oracle", "uncovered_delta_nats",
            "tokens_per_s_b1", "tokens_per_s_b16", "peak_rss_mb", "build_s"]


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def parser() -> argparse.ArgumentParser:
    """The bench's options (routing_rerank.py reads its expert budget defaults from here)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["train", "quality", "cost", "federated", "all"], default="all",
                    help="train: only fill the expert cache (with --shard, several processes share the work)")
    ap.add_argument("--shard", default="0/1", help="train: I/K trains experts I, I+K, I+2K, ... of the order")
    ap.add_argument("--tiny", action="store_true", help="config-built model and synthetic corpora (seconds)")
    ap.add_argument("--n", default="4,16,64", help="quality: numbers of real (trained) experts")
    ap.add_argument("--routing-n", default="4,16,64", help="quality: N for routing accuracy from pilots alone")
    ap.add_argument("--cost-n", default="4,16,64,256,1024", help="cost: numbers of experts")
    ap.add_argument("--cost-reps", type=int, default=1, help="cost: passes per N, order alternating; rows = medians")
    ap.add_argument("--fed-n", type=int, default=16, help="federated: owners (the first N experts of the order)")
    ap.add_argument("--fed-rounds", type=int, default=4)
    ap.add_argument("--fed-local-steps", type=int, default=2, help="federated: router steps per owner per round "
                    "(rounds x local steps x owners = central's step budget)")
    ap.add_argument("--fed-lr", type=float, default=1e-2)
    ap.add_argument("--fed-server-lr", type=float, default=None,
                    help="federated: server step on the mean update (default: the number of owners; 1 = FedAvg)")
    ap.add_argument("--fed-eval-blocks", type=int, default=4, help="federated: held-out blocks per domain")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--max-docs", type=int, default=40)
    ap.add_argument("--eval-blocks", type=int, default=2)
    ap.add_argument("--passages", type=int, default=8, help="held-out passages per domain for routing accuracy")
    ap.add_argument("--pilot-passages", type=int, default=256, help="training passages per domain for its pilots")
    ap.add_argument("--pilot-score", choices=["mean", "top3", "max"], default="top3",
                    help="retriever scoring rule of the rows (benchmarks/routing_rules.py compared them); routing "
                         "under the default rule 'mean' goes to details")
    ap.add_argument("--budget-mb", type=float, default=128.0, help="cost: resident LoRA memory budget")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=str(ROOT / "runs" / "scale"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    return ap


def setup(args):
    """(base, base_spec, corpora {domain: dir}, uncovered domains)."""
    from expertmesh.base import load_base

    work = Path(args.work)
    if args.tiny:
        from benchmarks.mesh.data import write_tiny_corpora
        from expertmesh.testing import make_tiny_base

        spec = str(make_tiny_base(work / "tiny-base"))
        corpora = write_tiny_corpora(work / "tiny-corpora", ["medicine", "law", "code", "poetry"])
        return load_base(spec), spec, corpora, ["poetry"]
    from expertmesh.corpora import build_all
    from expertmesh.corpora.fine import fine_domains
    from scale_quality import UNCOVERED

    root = work / "corpora"
    names = fine_domains()
    todo = [d for d in names if not (root / d / "meta.json").is_file()]
    if todo:
        log(f"[scale] building {len(todo)} fine corpora under {root}")
        build_all(todo, root, max_docs=args.max_docs, overwrite=True)
    return load_base(None), None, {d: root / d for d in names}, list(UNCOVERED)


def train_configs(args, corpora, names, base_spec, work):
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec

    targets = ["q_proj", "v_proj"] if args.tiny else ["q_proj", "k_proj", "v_proj", "o_proj"]
    return [TrainConfig(name=d, owner=f"{d}-owner", data=str(corpora[d] / "train.jsonl"),
                        out=str(work / "unused"), base=base_spec, steps=args.steps, batch_size=args.batch_size,
                        seq_len=args.seq_len, lr=3e-3, warmup_steps=1, seed=0, num_pilots=8,
                        lora=LoraSpec(r=args.rank, alpha=2.0 * args.rank, dropout=0.0, target_modules=targets),
                        domain_tags=[d], resume=False) for d in names]


def run_quality(args, base, base_spec, corpora, uncovered) -> tuple[list[dict], dict]:
    import scale_quality as q

    work = Path(args.work)
    order = q.domain_order([d for d in corpora if d not in uncovered])
    ns = [min(int(n), len(order)) for n in args.n.split(",")]
    t0 = time.perf_counter()
    dirs, train_info = q.train_all(train_configs(args, corpora, order[:max(ns)], base_spec, work), base,
                                   work / "experts", log)
    loops = [json.loads((p / "manifest.json").read_text())["training"] for p in dirs.values()]
    train_info["loop_seconds_per_expert"] = round(sum(t["seconds_this_run"] for t in loops) / len(loops), 1)
    train_info["loop_tokens_per_s_mean"] = round(sum(t["tokens_per_second"] or 0 for t in loops) / len(loops), 1)
    blocks = q.heldout_blocks(base, {d: corpora[d] for d in order[:max(ns)] + uncovered}, args.seq_len,
                              args.eval_blocks)
    passages = q.heldout_passages({d: corpora[d] for d in order[:max(ns + [int(n) for n in args.routing_n.split(",")
                                                                            if n])] + uncovered}, args.passages)
    # --routing-n "": routing from the trained packages' own pilots only (the N of --n)
    routing_ns = [min(int(n), len(order)) for n in args.routing_n.split(",") if n]
    rules = tuple(dict.fromkeys([args.pilot_score, "mean"]))
    by_rule = q.pilot_routing(corpora, order, routing_ns, passages, limit=args.pilot_passages, rules=rules,
                              log=log) if routing_ns else {}
    routing = by_rule.get(args.pilot_score, {})
    rows, details, memo = [], {"train": train_info, "order": order[:max(ns + routing_ns)],
                               "uncovered": uncovered}, {}
    for n in ns:
        ev = q.evaluate_n(base, dirs, order[:n], uncovered, blocks, passages, log, memo,
                          pilot_score=args.pilot_score)
        row = q.summarise(n, ev)
        details[f"n{n}"] = {**row.pop("details"), "routing_packages_confusion": ev["confusion"].tolist(),
                            "members": order[:n]}
        rows.append({"real": True, **row})
        log(f"[scale] N={n}: {row}")
    for n in routing_ns:                  # routing from the pilots, for every N (one method for all rows)
        r = next((x for x in rows if x["n_experts"] == n), None)
        if r is None:
            r = {"n_experts": n, "real": False}
            rows.append(r)
        r["routing_top1"], r["routing_top3"] = routing[n]["top1"], routing[n]["top3"]
        details.setdefault(f"n{n}", {}).update(
            {"routing_by_domain": routing[n]["per_domain"], "confusion": routing[n]["confusion"],
             "members": routing[n]["members"], "routing_method": "retriever over each owner's 8 pilots "
             f"(k-means of <= {args.pilot_passages} embedded training passages), held-out passages as queries, "
             f"pilot score {args.pilot_score!r}",
             "routing_by_rule": {r: {"top1": by_rule[r][n]["top1"], "top3": by_rule[r][n]["top3"]} for r in rules}})
    rows.sort(key=lambda x: x["n_experts"])
    details["quality_seconds"] = round(time.perf_counter() - t0, 1)
    details["pilot_score"] = args.pilot_score
    details["budget"] = {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
                         "tokens_per_expert": args.steps * args.batch_size * args.seq_len, "rank": args.rank,
                         "eval_blocks": args.eval_blocks, "passages_per_domain": args.passages}
    return rows, details


def run_train(args, base, base_spec, corpora, uncovered) -> None:
    """Fill the expert cache for the largest N (this shard's share): quality and cost then train nothing."""
    import scale_quality as q

    i, k = (int(x) for x in args.shard.split("/"))
    order = q.domain_order([d for d in corpora if d not in uncovered])[:max(int(n) for n in args.n.split(","))]
    cfgs = train_configs(args, corpora, order, base_spec, Path(args.work))[i::k]
    q.train_all(cfgs, base, Path(args.work) / "experts", log)


def run_cost(args, base, base_spec, corpora, uncovered) -> tuple[list[dict], dict]:
    import scale_cost as c
    import scale_quality as q

    from expertmesh.expert.cache import cache_key

    work = Path(args.work)
    order = q.domain_order([d for d in corpora if d not in uncovered])
    ns = [int(n) for n in args.cost_n.split(",")]
    # the real experts already in the cache (a prefix of the order); beyond them members are derived
    real = []
    for cfg in train_configs(args, corpora, order[:max(ns)], base_spec, work):
        path = work / "experts" / cache_key(cfg, base.fingerprint)
        if not (path / "manifest.json").is_file():
            break
        real.append(path)
    if not real:
        raise SystemExit("error: no cached real experts; run --part train or --part quality first")
    return c.run_cost(base_spec, real, ns, work / "cost", args.budget_mb, log,
                      corpora={d: corpora[d] for d in order}, reps=args.cost_reps)


def run_fed(args, base, base_spec, corpora, uncovered) -> tuple[list[dict], dict]:
    """Federated (Flower simulation) vs central router tuning over the first --fed-n trained experts."""
    import scale_federated as f
    import scale_quality as q

    work = Path(args.work)
    order = q.domain_order([d for d in corpora if d not in uncovered])[:args.fed_n]
    dirs, _ = q.train_all(train_configs(args, corpora, order, base_spec, work), base, work / "experts", log)
    res = f.run_federated(base, base_spec, dirs, {d: corpora[d] for d in order}, work / f"federated-n{args.fed_n}",
                          rounds=args.fed_rounds, local_steps=args.fed_local_steps, batch_size=args.batch_size,
                          seq_len=args.seq_len, lr=args.fed_lr, eval_blocks=args.fed_eval_blocks, log=log,
                          server_lr=args.fed_server_lr if args.fed_server_lr is not None else float(len(dirs)))
    return [], res


def merge_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    """Rows by n_experts: a part fills its fields and keeps the other part's from an earlier run."""
    old = {}
    if path.is_file():
        old = {r["n_experts"]: r for r in json.loads(path.read_text()).get("rows", [])}
    for r in new_rows:
        merged = {**{k: None for k in ROW_KEYS}, **old.get(r["n_experts"], {}),
                  **{k: v for k, v in r.items() if k in ROW_KEYS}}
        old[r["n_experts"]] = {k: merged[k] for k in ROW_KEYS}
    return [old[n] for n in sorted(old)]


def main() -> None:
    args = parser().parse_args()
    import torch

    load0 = os.getloadavg()[0]
    torch.set_num_threads(args.threads or (1 if load0 > 0.75 * (os.cpu_count() or 1) else os.cpu_count() or 1))
    if args.tiny:
        args.n, args.routing_n, args.cost_n, args.cost_reps = "2,3", "2,3", "2,3,8", 2
        args.steps, args.batch_size, args.seq_len = 2, 2, 32
        args.eval_blocks, args.passages, args.budget_mb = 1, 2, 0.05
        args.fed_n, args.fed_rounds, args.fed_local_steps, args.fed_eval_blocks = 3, 1, 2, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base, base_spec, corpora, uncovered = setup(args)
    if args.part == "train":
        run_train(args, base, base_spec, corpora, uncovered)
        return
    rows, details = [], {}
    details_path = out / "details.json"
    parts = ["quality", "cost", "federated"] if args.part == "all" else [args.part]
    runners = {"quality": run_quality, "cost": run_cost, "federated": run_fed}
    for part in parts:
        t_part = time.perf_counter()
        r, d = runners[part](args, base, base_spec, corpora, uncovered)
        rows += r
        details[part] = {**d, "seconds": round(time.perf_counter() - t_part, 1),
                         "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                         "torch_threads": torch.get_num_threads(),
                         "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                         "command": "python benchmarks/scale_bench.py " + " ".join(sys.argv[1:])}
    # read what another part's run wrote only now (the two parts may run at the same time)
    details = {**(json.loads(details_path.read_text()) if details_path.is_file() else {}), **details}
    results = {"format": "expertmesh-scale/1", "rows": merge_rows(out / "results.json", rows)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    details_path.write_text(json.dumps(details, indent=1) + "\n")
    from scale_report import write_markdown, write_plots

    write_plots(results, details, out)
    if not args.tiny:
        write_markdown(results, details, Path(args.markdown), out)
    log(f"[scale] wrote {out / 'results.json'} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
