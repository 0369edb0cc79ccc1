"""lm-eval benchmark (issue 17): the base vs a composition on a next-line choice task built from held-out text.

For each domain, items come from the held-out split of its corpus (documents no expert trained on): a context of
up to three consecutive lines of one document, the true next line, and three distractor lines drawn from other
held-out documents of the same domain (so the choice needs the document, not the domain). lm-evaluation-harness,
unchanged, scores them as ``multiple_choice`` (acc and length-normalised acc_norm):
    base         lm-eval's own ``hf`` model over the base directory (plain transformers, no expertmesh code)
    composition  lm-eval's ``local-completions`` against ``expertmesh serve`` (echo + logprobs, max_tokens=0
                 path of /v1/completions) over a domain-router composition of the domains' experts
Experts are trained once under --work (``expertmesh expert train``) unless present.

Run (~15 min on 2 shared cores, most of it the two experts the first time):
    nice -n 10 .venv/bin/python benchmarks/lm_eval_bench.py --domains law medicine
Tiny pipeline check: add --tiny (config-built model; figures meaningless, nothing written to BENCHMARKS.md).
Writes <work>/results.json and the BENCHMARKS.md section between <!-- lm-eval-bench:start/end -->.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "FLWR_TELEMETRY_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

def _lines(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", ln).strip() for ln in text.splitlines() if len(ln.strip()) >= 20]


def next_line_items(records: list[dict], n_items: int, n_choices: int, seed: int) -> list[dict]:
    """One item per held-out document (round-robin until ``n_items``): context lines, the true next line at
    index 0 of ``choices`` before shuffling, distractors from other documents of the same split."""
    rng = random.Random(seed)
    docs = [(r["id"], _lines(r["text"])) for r in records]
    docs = [(i, ls) for i, ls in docs if len(ls) >= 2]
    pool = [(i, ln) for i, ls in docs for ln in ls]
    items: list[dict] = []
    order = list(range(len(docs)))
    rng.shuffle(order)
    while len(items) < n_items and order:
        for j in order:
            doc_id, ls = docs[j]
            k = rng.randrange(1, len(ls))
            others = [ln for i, ln in pool if i != doc_id and ln != ls[k]]
            if len(others) < n_choices - 1:
                continue
            choices = [ls[k]] + rng.sample(others, n_choices - 1)
            perm = list(range(n_choices))
            rng.shuffle(perm)
            items.append({"id": f"{doc_id}:{k}", "context": "\n".join(ls[max(0, k - 3):k]),
                          "choices": [choices[p] for p in perm], "label": perm.index(0)})
            if len(items) >= n_items:
                break
    return items


def write_tasks(work: Path, corpora: dict[str, Path], n_items: int, n_choices: int, seed: int) -> dict[str, int]:
    from benchmarks.lm_eval_tasks import write_task
    from expertmesh.corpora.records import read_records

    tasks = work / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    counts = {}
    for d, path in corpora.items():
        items = next_line_items(read_records(path / "heldout.jsonl"), n_items, n_choices, seed)
        (tasks / f"{d}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
        # "\n": the choice is the next line of the document, so it follows the context after a line break.
        write_task(tasks / f"{d}.yaml", f"mesh_nextline_{d}", tasks / f"{d}.jsonl", metrics=("acc", "acc_norm"),
                   target_delimiter="\n")
        counts[d] = len(items)
    return counts


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def prepare(args, work: Path) -> tuple[Path, dict[str, Path], Path]:
    """Base dir, corpora and a local composition directory (experts trained once)."""
    from expertmesh.base import resolve_base_dir

    py = [sys.executable, "-m", "cli.main"]
    if args.tiny:
        from expertmesh.testing import make_tiny_base
        base_dir = make_tiny_base(work / "tiny-base")
    else:
        base_dir = resolve_base_dir(None)
    corpora = {d: work / "corpora" / d for d in args.domains}
    missing = [d for d, p in corpora.items() if not (p / "meta.json").is_file()]
    if missing:
        _run(py + ["data", "build", *sum([["--domain", d] for d in missing], []), "--out", str(work / "corpora"),
                   "--max-docs", str(args.max_docs)])
    for d in args.domains:
        if not (work / "experts" / d / "manifest.json").is_file():
            _run(py + ["expert", "train", "--data", str(corpora[d]), "--name", d, "--owner", "mesh", "--out",
                       str(work / "experts" / d), "--steps", str(args.steps), "--batch-size", "4", "--seq-len",
                       "128", "--threads", "1", "--quiet", "--overwrite"] + (["--base", str(base_dir)] if args.tiny else []))
    comp = work / "composition"
    _run(py + ["compose", "build", "lmeval-mesh", "--local", str(work / "experts"), "--router", "domain",
               "--top-k", "2", "--out", str(comp), "--overwrite"])
    return base_dir, corpora, comp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(comp: Path, experts: Path, base_dir: Path, port: int, log: Path, threads: int) -> subprocess.Popen:
    from expertmesh.procwait import ProcessNotReadyError, wait_until_ready

    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--composition", str(comp), "--experts",
                             str(experts), "--base", str(base_dir), "--port", str(port), "--max-batch", "8",
                             "--threads", str(threads), "--log-level", "warning"],
                            cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}/readyz", timeout=600, interval=1.0, name="serve", log=log)
    except ProcessNotReadyError:
        if proc.poll() is None:
            proc.terminate()
        raise
    return proc


def plain_base_dir(base_dir: Path, work: Path) -> Path:
    """The base for lm-eval's ``hf`` model: the same weight files (linked, not copied) with a config.json that
    drops ``quantization_config`` (a note left by the GGUF conversion that makes transformers look for a GGUF
    file). The weights, hence the fingerprint, are the same."""
    out = work / "base-hf"
    out.mkdir(parents=True, exist_ok=True)
    for f in base_dir.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def evaluate(model: str, model_args: str, tasks: list[str], task_dir: Path) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                  task_manager=TaskManager(include_path=str(task_dir)))
    return out["results"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", nargs="+", default=["law", "medicine"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "lmeval")
    ap.add_argument("--items", type=int, default=24, help="items per domain")
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--steps", type=int, default=16, help="training steps per expert (4 x 128 tokens each)")
    ap.add_argument("--max-docs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (1: no barrier stalls on a busy CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--reuse-composition", action="store_true",
                    help="Reuse <work>/composition_results.json from an earlier run (rerun only the base)")
    args = ap.parse_args()
    work = args.work / "tiny" if args.tiny else args.work
    work.mkdir(parents=True, exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    base_dir, corpora, comp = prepare(args, work)
    counts = write_tasks(work, corpora, args.items, args.choices, args.seed)
    tasks = [f"mesh_nextline_{d}" for d in args.domains]
    import torch

    torch.set_num_threads(args.threads)       # lm-eval's hf model runs in this process: same thread budget
    port = _free_port()
    cached = work / "composition_results.json"
    if args.reuse_composition and cached.is_file():
        comp_res, comp_s = json.loads(cached.read_text()), float("nan")
    else:
        comp_res, comp_s = _composition_eval(comp, work, base_dir, port, args.threads, tasks)
    (work / "composition_results.json").write_text(json.dumps(comp_res, indent=2, default=str))
    base_res, base_s = evaluate("hf", f"pretrained={plain_base_dir(base_dir, work)},device=cpu,dtype=float32,"
                                "batch_size=4", tasks, work / "tasks")
    _report(args, work, counts, comp_res, comp_s, base_res, base_s, t_start, load_start)


def _composition_eval(comp: Path, work: Path, base_dir: Path, port: int, threads: int, tasks: list[str]):
    proc = serve(comp, work / "experts", base_dir, port, work / "serve.log", threads)
    try:
        return evaluate("local-completions", f"model=lmeval-mesh,base_url=http://127.0.0.1:{port}/v1/"
                                    f"completions,tokenizer_backend=huggingface,tokenizer={base_dir},"
                                    "num_concurrent=4,max_retries=1,max_length=2048", tasks, work / "tasks")
    finally:
        proc.terminate()
        proc.wait(60)


def _report(args, work, counts, comp_res, comp_s, base_res, base_s, t_start, load_start) -> None:
    rows = []
    for d in args.domains:
        t = f"mesh_nextline_{d}"
        rows.append({"domain": d, "items": counts[d], **{f"{who}_{m}": res[t][f"{m},none"]
                     for who, res in (("base", base_res), ("composition", comp_res)) for m in ("acc", "acc_norm")},
                     **{f"{who}_{m}_stderr": res[t].get(f"{m}_stderr,none")
                        for who, res in (("base", base_res), ("composition", comp_res)) for m in ("acc",)}})
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "rows": rows,
              "args": {k: str(v) for k, v in vars(args).items()}, "seconds": {"composition_eval": round(comp_s, 1),
              "base_eval": round(base_s, 1), "total": round(time.perf_counter() - t_start, 1)},
              "load_average": {"start": load_start, "end": os.getloadavg()[0]}}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.tiny and not args.no_write:
        write_section(result, args)


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def write_section(result: dict, args) -> None:
    lines = ["<!-- lm-eval-bench:start -->", "## lm-eval: base vs composition on held-out next-line choice (issue 17)", "",
             f"Command: `nice -n 10 .venv/bin/python benchmarks/lm_eval_bench.py --domains {' '.join(args.domains)} "
             f"--items {args.items} --steps {args.steps}`  ",
             f"Date: {result['date']}; machine: 2 shared cores; 1-min load average "
             f"{result['load_average']['start']:.1f} at start, {result['load_average']['end']:.1f} at end; "
             f"total {result['seconds']['total']:.0f} s (composition eval {result['seconds']['composition_eval']:.0f} s,"
             f" base eval {result['seconds']['base_eval']:.0f} s).", "",
             "Task (built from each domain's held-out documents, which no expert trained on): up to three lines of "
             f"a document, then pick its true next line among {args.choices} (three distractors are lines of other "
             "held-out documents of the same domain). lm-evaluation-harness 0.4.13, unchanged: base = its `hf` "
             "model over the base directory; composition = its `local-completions` against `expertmesh serve` "
             f"(echo + logprobs) over a domain-router (top-2) composition of {', '.join(args.domains)} experts "
             f"({args.steps} steps x 4 x 128 tokens each, LoRA r=16 q,k,v,o). Chance = {1 / args.choices:.2f}.", "",
             "| domain | items | base acc | composition acc | base acc_norm | composition acc_norm |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['domain']} | {r['items']} | {_fmt(r['base_acc'])} ± {_fmt(r['base_acc_stderr'])} | "
                     f"{_fmt(r['composition_acc'])} ± {_fmt(r['composition_acc_stderr'])} | "
                     f"{_fmt(r['base_acc_norm'])} | {_fmt(r['composition_acc_norm'])} |")
    lines += ["", "± is lm-eval's standard error. With this few items a difference under ~2 standard errors is noise.",
              "<!-- lm-eval-bench:end -->"]
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8")
    section = "\n".join(lines)
    if "<!-- lm-eval-bench:start -->" in text:
        text = re.sub(r"<!-- lm-eval-bench:start -->.*?<!-- lm-eval-bench:end -->", lambda _m: section, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
