"""Cost half of the scale bench: serving a composition of N experts through the real engine, N up to 1024.

Per N, in a fresh subprocess (so peak RSS is that N's alone):
  build_s            build the composition (retrieve, top-2 candidates, token gate among them) from packages:
                     manifests and signatures only, no LoRA weights read
  load_s             load it for serving (signatures only) and start the engine with the LoRA budget
  tokens_per_s_b1    one request, greedy decode, generated tokens / decode seconds
  tokens_per_s_b16   16 concurrent requests (different held-out passages, so different experts), all generated
                     tokens / wall seconds from the first submit to the last token, on a second pass (the first
                     one loads the experts those prompts pick)
  ttft_cold_s        time to first token of a request whose expert is not resident (it is read, checked, and
                     written into a slot first), and ttft_warm_s for the same request again
  peak_rss_mb        the subprocess's peak resident set; resident_peak_mb the LoRA pool's peak use vs its budget

Members beyond the real experts are *derived*: the real package format, the adapter weights hard-linked from a
real expert (same bytes), and their own signature (the source's router rows and pilots plus noise), so routing
spreads over all N. Rows say real=false for any N that holds derived members.

With ``reps`` > 1 every N runs ``reps`` times, the order of the Ns reversed on every other pass (4, 64, 64, 4,
...), so a change in the shared machine's load falls on every N alike; a row holds the median of its passes, and
details keep every pass.

    python benchmarks/scale_cost.py --job runs/scale/cost/job-64.json --work runs/scale/cost
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
GEN_TOKENS = 8


def derive_package(src: Path, dest: Path, name: str, seed: int) -> Path:
    """A real-format package named ``name``: src's weights hard-linked, a perturbed signature, a new manifest."""
    import torch

    from expertmesh.expert.manifest import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
    from expertmesh.expert.package import finalize_manifest, load_signature, read_manifest, save_signature
    from expertmesh.fileio import atomic_directory

    if (dest / "manifest.json").is_file():
        return dest
    manifest = read_manifest(src)
    sig = load_signature(src)
    g = torch.Generator().manual_seed(seed)
    rows = sig["router_rows"] + 0.05 * sig["router_rows"].std() * torch.randn(sig["router_rows"].shape, generator=g)
    pilots = torch.nn.functional.normalize(sig["pilots"] + 0.05 * torch.randn(sig["pilots"].shape, generator=g), dim=-1)
    with atomic_directory(dest, overwrite=True) as tmp:
        for f in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE):
            os.link(src / f, tmp / f)
        save_signature(tmp, rows, sig["anchor_rows"], pilots)
        manifest.name, manifest.owner = name, f"{name}-owner"
        manifest.domain_tags = [name]
        manifest.description = f"derived from {src.name} for the scale bench (same weights, perturbed signature)"
        finalize_manifest(tmp, manifest)
    return dest


def member_dirs(real: list[Path], n: int, derived_root: Path) -> dict[str, Path]:
    from expertmesh.expert.package import read_manifest

    out = {read_manifest(p).name: p for p in real[:n]}
    for j in range(len(out), n):
        src = real[j % len(real)]
        out[f"derived-{j:04d}"] = derive_package(src, derived_root / f"derived-{j:04d}", f"derived-{j:04d}", j)
    return out


def _request(engine, prompt: str, max_tokens: int, selection=None):
    from expertmesh.serving.composition import Selection
    from expertmesh.serving.requests import GenerationRequest, SyncSink
    from expertmesh.serving.sampling import SamplingParams

    sink = SyncSink()
    req = GenerationRequest(prompt, engine.comp.encode(prompt), SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True), selection or Selection())
    engine.submit(req, sink)
    return sink


def _done(sink) -> dict:
    for ev in sink.events(1800):
        if ev.kind == "error":
            raise ev.error
        if ev.kind == "done":
            return ev.data
    raise RuntimeError("no done event")


def measure_one(n: int, dirs: dict[str, Path], prompts: list[str], work: Path, budget_mb: float,
                base_spec: str | None = None) -> dict:
    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition
    from expertmesh.serving.composition import Selection, load_served
    from expertmesh.serving.engine import Engine
    from expertmesh.serving.settings import ServeSettings

    base = load_base(base_spec)
    comp_dir = work / f"comp-{n}"
    t0 = time.perf_counter()
    build_composition(f"cost-{n}", dirs, "retrieve", out=comp_dir, overwrite=True, top_m=2, top_k=2)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    comp = load_served(comp_dir, dirs, base)
    engine = Engine(comp, ServeSettings(max_batch=16, resident_budget_mb=budget_mb, threads=1, max_context=512,
                                        batch_wait_ms=50.0)).start()
    load_s = time.perf_counter() - t0
    try:
        _done(_request(engine, prompts[0], 2))                           # warm-up: first forward, first loads
        d = _done(_request(engine, prompts[1 % len(prompts)], GEN_TOKENS))
        b1 = (d["usage"]["completion_tokens"] - 1) / max(d["latency_s"] - d["ttft_s"], 1e-9)
        # 16 concurrent rows, timed on a second pass: the first loads their experts (cold TTFT is below)
        for _ in range(2):
            t0 = time.perf_counter()
            sinks = [_request(engine, prompts[i % len(prompts)], GEN_TOKENS) for i in range(16)]
            dones = [_done(s) for s in sinks]
            b16 = sum(x["usage"]["completion_tokens"] for x in dones) / (time.perf_counter() - t0)
        resident = set(engine.resident.resident)
        cold = next((m for m in reversed(comp.members) if m not in resident), comp.members[-1])
        engine.resident.evict({cold})                    # (a no-op unless every member was resident)
        sel = Selection(include=[cold])
        ttft_cold = _done(_request(engine, prompts[0], 1, sel))["ttft_s"]
        ttft_warm = _done(_request(engine, prompts[0], 1, sel))["ttft_s"]
        stats = engine.stats()["resident"]
    finally:
        engine.stop()
        comp.close()
    return {"n_experts": n, "build_s": round(build_s, 3), "load_s": round(load_s, 3),
            "tokens_per_s_b1": round(b1, 2), "tokens_per_s_b16": round(b16, 2),
            "ttft_cold_s": round(ttft_cold, 3), "ttft_warm_s": round(ttft_warm, 3), "cold_expert": cold,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "budget_mb": budget_mb, "resident_peak_mb": stats["resident_peak_mb"], "slot_mb": stats["slot_mb"],
            "capacity": stats["capacity"], "loads": stats["loads"], "evictions": stats["evictions"]}


def run_cost(base_spec: str | None, real: list[Path], ns: list[int], work: Path, budget_mb: float, log,
             corpora: dict[str, Path] | None = None, reps: int = 1) -> tuple[list[dict], dict]:
    """One subprocess per N and pass (fresh peak RSS); rows in the results format plus details by N."""
    from expertmesh.corpora.records import load_texts

    work.mkdir(parents=True, exist_ok=True)
    prompts = [" ".join(load_texts(p, split="heldout")[0].split()[:48]) for p in list((corpora or {}).values())[:32]]
    prompts = prompts or ["the licensee shall not", "the patient was given", "def main(argv):"]
    passes: dict[int, list[dict]] = {n: [] for n in ns}
    for rep in range(reps):
        for n in (ns if rep % 2 == 0 else ns[::-1]):
            passes[n].append(_measure_in_subprocess(n, real, prompts, work, budget_mb, base_spec))
            log(f"[scale] cost N={n} pass {rep + 1}/{reps}: {passes[n][-1]}")
    rows, by_n = [], {}
    for n in ns:
        res = _median_pass(passes[n])
        by_n[str(n)] = res
        rows.append({k: res[k] for k in ("n_experts", "real", "tokens_per_s_b1", "tokens_per_s_b16", "peak_rss_mb",
                                         "build_s")})
    note = (f"Cost rows: retrieve composition (top-2 candidates, token gate top-2 among them), LoRA pool bounded "
            f"at {budget_mb} MB, engine max_batch 16, 1 torch thread, {GEN_TOKENS} greedy tokens per request"
            + (f"; median of {reps} passes per N, the order of the Ns reversed on every other pass" if reps > 1
               else "") + f". Members beyond the {len(real)} real experts are derived (weights hard-linked from a "
            "real expert, perturbed signature): rows with real=false.")
    return rows, {"by_n": by_n, "real_experts": len(real), "reps": reps, "note": note}


def _measure_in_subprocess(n: int, real: list[Path], prompts: list[str], work: Path, budget_mb: float,
                           base_spec: str | None) -> dict:
    dirs = member_dirs(real, n, work / "derived")
    spec = work / f"job-{n}.json"
    spec.write_text(json.dumps({"n": n, "dirs": {k: str(v) for k, v in dirs.items()}, "prompts": prompts,
                                "budget_mb": budget_mb, "base": base_spec}))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--job", str(spec), "--work", str(work)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cost run for N={n} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["real"] = n <= len(real)
    res["subprocess_s"] = round(time.perf_counter() - t0, 1)
    res["load_average_1min"] = round(os.getloadavg()[0], 2)
    return res


def _median_pass(results: list[dict]) -> dict:
    """The pass with the median b16 throughput, its rates replaced by the medians over passes; every pass kept."""
    if len(results) == 1:
        return results[0]
    mid = sorted(results, key=lambda r: r["tokens_per_s_b16"])[len(results) // 2]
    return {**mid, **{k: round(statistics.median(r[k] for r in results), 2)
                      for k in ("tokens_per_s_b1", "tokens_per_s_b16", "build_s", "load_s")},
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "passes": results}


def _job(spec_path: str, work: str) -> None:
    import torch

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    res = measure_one(spec["n"], {k: Path(v) for k, v in spec["dirs"].items()}, spec["prompts"], Path(work),
                      spec["budget_mb"], spec.get("base"))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", required=True, help="JSON job file written by run_cost")
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    _job(a.job, a.work)
