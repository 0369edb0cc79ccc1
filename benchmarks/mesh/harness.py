"""run_bench: corpora -> experts -> every method -> analyses -> results.json + plots + BENCHMARKS.md section."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.mesh.config import BenchConfig
from benchmarks.mesh.markdown import replace_section

COMPOSITIONS = ["domain-router-k1", "domain-router-k2", "retriever-top1", "retriever-top2-gate", "uniform-merge",
                "ties-merge", "btm-ensemble", "federated-tuned-router", "mot", "fedavg-lora"]


def machine_info() -> dict:
    import torch

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "peft", "faiss", "flwr", "numpy", "matplotlib"):
        try:
            from importlib import metadata

            name = {"faiss": "faiss-cpu"}.get(pkg, pkg)
            versions[pkg] = metadata.version(name)
        except Exception:  # noqa: BLE001
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        commit = None
    return {"nproc": os.cpu_count(), "ram_gb": mem, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "versions": versions, "git_commit": commit}


def run_bench(cfg: BenchConfig, *, command: str | None = None, log=print, markdown_path: str | Path | None = None,
              publish_dir: str | Path | None = None) -> dict:
    """Run everything; write <out>/results.json and plots. ``markdown_path``: the BENCHMARKS.md whose mesh-bench
    section is replaced (default <out>/BENCHMARKS.md); ``publish_dir``: a tracked folder that receives copies of
    results.json and the plots, which the markdown then links to."""
    import torch

    from expertmesh.base import load_base
    from benchmarks.mesh import analyses
    from benchmarks.mesh.data import build_corpora, read_texts, write_tiny_corpora
    from benchmarks.mesh.experts import get_expert
    from benchmarks.mesh.methods import METHODS, Context
    from benchmarks.mesh.report import render_markdown, write_plots
    from expertmesh.expert.blocks import pack_blocks
    from expertmesh.mixture.lora_io import load_expert

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = cfg.threads or (1 if load1 > 0.75 * (os.cpu_count() or 1) else (os.cpu_count() or 1))
    # On a shared, loaded machine one thread is 2-3x faster than two (no waiting on a descheduled peer).
    torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    results: dict = {"format": "expertmesh-bench/1", "config": cfg.to_dict(),
                     "command": command or f"expertmesh bench --{cfg.mode}",
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info()}
    results["machine"]["load_average_1min_at_start"] = round(load1, 2)

    # 1. base
    t0 = time.perf_counter()
    if cfg.mode == "tiny" and cfg.base is None:
        from expertmesh.testing import make_tiny_base

        base_spec = str(make_tiny_base(out / "tiny-base"))
    else:
        base_spec = cfg.base
    base = load_base(base_spec)
    results["base"] = {"spec": base_spec or "smollm2-135m-instruct", "fingerprint": base.fingerprint,
                       "params": sum(p.numel() for p in base.model.parameters()), "layers": base.num_layers,
                       "hidden": base.hidden_size}
    timings["load_base"] = time.perf_counter() - t0

    # 2. corpora
    t0 = time.perf_counter()
    if cfg.mode == "tiny":
        corpora, skipped, metas = write_tiny_corpora(out / "corpora", cfg.domains, cfg.seed), {}, {}
    else:
        corpora, skipped, metas = build_corpora(cfg.domains, out / "corpora", max_docs=cfg.max_docs,
                                                reuse=cfg.reuse, log=log)
    available = [d for d in cfg.domains if d in corpora]
    if not available:
        from expertmesh.errors import DataError

        raise DataError(f"no domain corpus could be built: {skipped}")
    k = min(cfg.expert_domains, len(available) - 1 if len(available) > 1 else 1)
    expert_domains, uncovered = available[:k], available[k:]
    results["domains"] = {"requested": cfg.domains, "available": available, "skipped": skipped,
                          "expert_domains": expert_domains, "uncovered": uncovered,
                          "corpus_meta": {d: {kk: m.get(kk) for kk in ("counts", "docs", "train_docs",
                                                                        "heldout_docs", "source") if kk in m}
                                          for d, m in metas.items()}}
    timings["corpora"] = time.perf_counter() - t0

    # 3. experts (equal budget per domain)
    t0 = time.perf_counter()
    expert_recs, experts, expert_paths = {}, [], {}
    for d in expert_domains:
        path, rec = get_expert(cfg, base, base_spec, d, corpora[d], out / "experts", steps=cfg.steps, log=log)
        expert_recs[d] = rec
        expert_paths[d] = path
        experts.append(load_expert(path, expected_fingerprint=base.fingerprint, name=d))
    timings["experts"] = time.perf_counter() - t0

    # 4. held-out blocks
    blocks = {}
    for d in available:
        blocks[d] = pack_blocks(base.tokenizer, read_texts(corpora[d] / "heldout.jsonl"), cfg.seq_len,
                                max_blocks=cfg.eval_blocks, what=f"held-out {d}")
    results["eval"] = {"blocks": {d: int(b.shape[0]) for d, b in blocks.items()}, "seq_len": cfg.seq_len,
                       "tokens_scored": {d: int(b.shape[0] * (b.shape[1] - 1)) for d, b in blocks.items()}}

    ctx = Context(cfg=cfg, base=base, base_spec=base_spec, experts=experts, expert_domains=expert_domains,
                  eval_domains=available, blocks=blocks, corpora=corpora, work=out, log=log)
    ctx.extras["experts"] = expert_recs
    ctx.extras["expert_paths"] = expert_paths

    # 5. methods
    rows, status = {}, {}
    for name, info in METHODS.items():
        t0 = time.perf_counter()
        try:
            got = info.fn(ctx)
            for row, val in got.items():
                rows[row] = {**val, "method": name, "group": info.group}
            status[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 2),
                            "description": info.description, "group": info.group, "rows": list(got)}
            log(f"[bench] method {name}: ok ({status[name]['seconds']}s)")
        except Exception as e:  # noqa: BLE001 - a failing method is reported, the others still run
            status[name] = {"status": "error", "reason": f"{type(e).__name__}: {e}", "description": info.description,
                            "group": info.group, "traceback": traceback.format_exc(limit=6)}
            log(f"[bench] method {name}: ERROR {type(e).__name__}: {e}")
    for r in rows.values():
        L = r["losses"]
        r["ppl"] = {d: math.exp(v) for d, v in L.items()}
        cov = [L[d] for d in expert_domains if d in L]
        r["mixture_loss"] = sum(cov) / len(cov) if cov else None
        r["mixture_ppl"] = math.exp(r["mixture_loss"]) if cov else None
        allv = [L[d] for d in available if d in L]
        r["all_domains_loss"] = sum(allv) / len(allv) if allv else None
    results["methods"] = status
    results["rows"] = rows
    timings["methods"] = sum(s.get("seconds", 0) for s in status.values())

    # 6. analyses
    if "base" in rows:
        unc = {}
        for d in uncovered:
            b = rows["base"]["losses"][d]
            unc[d] = {"base_loss": b}
            for m in (m for m in COMPOSITIONS if m in rows):
                # a method scored on fewer positions (MoT, after its prefix) is compared with the base on those
                ref = rows[m].get("base_same_positions", {}).get(d, b)
                loss = rows[m]["losses"][d]
                unc[d][m] = {"loss": loss, "base_loss": ref, "delta_vs_base": loss - ref,
                             "not_worse_than_base": loss <= ref + 1e-6}
        results["uncovered_domain"] = unc
    results["routing_accuracy"] = ctx.extras.get("routing_accuracy")
    results["heatmap"] = ctx.extras.get("heatmap")
    results["experts"] = ctx.extras.get("experts")
    for name, fn in (("opt_out", lambda: analyses.opt_out_exactness(ctx)),
                     ("generation", lambda: analyses.generation_speed(ctx, cfg.gen_tokens)),
                     ("scaling", lambda: analyses.router_scaling(cfg.scaling_sizes, hidden=base.hidden_size,
                                                                 layers=base.num_layers))):
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        timings[name] = time.perf_counter() - t0
        log(f"[bench] {name}: {time.perf_counter() - t0:.1f}s")

    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["plots"] = write_plots(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    publish(results, out, markdown_path=markdown_path, publish_dir=publish_dir)
    log(f"[bench] wrote {out / 'results.json'} in {results['total_seconds']}s")
    return results


def publish(results: dict, out: Path, *, markdown_path=None, publish_dir=None) -> None:
    """Plots are in ``out``; copy them (and results.json) to ``publish_dir`` and replace the markdown section."""
    from benchmarks.mesh.report import render_markdown

    md = Path(markdown_path) if markdown_path else out / "BENCHMARKS.md"
    plot_home = out
    if publish_dir:
        import shutil

        plot_home = Path(publish_dir)
        plot_home.mkdir(parents=True, exist_ok=True)
        for f in ["results.json", *results["plots"].values()]:
            if (out / f).resolve() != (plot_home / f).resolve():
                shutil.copyfile(out / f, plot_home / f)
    prefix = os.path.relpath(plot_home.resolve(), md.resolve().parent).replace(os.sep, "/") + "/"
    update_benchmarks_md(md, render_markdown(results, plot_home, plot_prefix="" if prefix == "./" else prefix))
    results["markdown"] = str(md)


def render_from_results(results_json: str | Path, *, markdown_path=None, publish_dir=None) -> dict:
    """Re-draw the plots and the markdown section from an earlier run's results.json (no model is loaded)."""
    from benchmarks.mesh.report import write_plots

    path = Path(results_json)
    results = json.loads(path.read_text())
    out = path.parent
    results["plots"] = write_plots(results, out)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    publish(results, out, markdown_path=markdown_path, publish_dir=publish_dir)
    return results


def update_benchmarks_md(path: Path, section: str) -> None:
    """Replace only the mesh-bench section (create the file, or append the section, where missing)."""
    replace_section(path, "mesh-bench", section)
