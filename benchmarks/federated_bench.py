"""Coordinator-training benchmark: does federated router tuning / MoT help, and what do DP and FedAvg-LoRA cost?

On real corpora (law, medicine, code) with the default base (SmolLM2-135M) and three small experts, it measures
held-out loss per domain for:
  base              the public base alone
  oracle expert     each domain's own expert, fixed weight 1 (routing upper reference, needs the domain label)
  oracle gated      each domain's own expert behind the two-way gate {public, expert} its owner trained it with
  untuned router    FlexOlmo domain composition (owners' rows, no joint training)
  federated tuned   Flower FedAvg over router rows + bias, 3 owners (simulation engine)
  central tuned     same budget on pooled data (upper bound for federated tuning)
  federated + DP    client-side clipping with central noise; local DP (LocalDpMod)
  MoT (central)     Mixture-of-Thoughts selector + interaction layers trained on pooled data, with gated streams
                    (default) and with LoRA-alone streams (the paper's form), plus gated untrained (no training)
  MoT (federated)   gated MoT trained through the same Flower apps, same total steps as the central one
  FedAvg LoRA       one LoRA trained by plain FedAvg across owners, same total tokens as the three experts
and the cost side: trained parameters, training time and tokens, evaluation tokens/s.

Run (~20 min of 2 CPU cores when the machine is otherwise idle; reuses the mesh-bench's corpora and experts
from runs/bench if present, else builds/trains them into runs/federated-bench):
    nice .venv/bin/python benchmarks/federated_bench.py
Tiny CPU variant (about a minute, tiny config-built model; figures meaningless, checks the pipeline):
    .venv/bin/python benchmarks/federated_bench.py --tiny
Writes runs/federated-bench[-tiny]/results.json and (real run only, unless --write-tiny) its section of
BENCHMARKS.md between <!-- federated-bench:start --> and <!-- federated-bench:end -->.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

DOMAINS = ("law", "medicine", "code")
REAL = {"seq_len": 128, "batch": 4, "eval_blocks": 8, "rounds": 3, "local_steps": 4, "select_tokens": 32,
        "mot_steps": 72, "mot": {"top_k": 2, "num_interaction": 3, "latent_dim": 64, "num_heads": 4,
                                 "select_tokens": 32, "selector_hidden": 128},
        "tune_lr": 1e-2, "mot_lr": 2e-3, "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0,
                                                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "lora_lr": 2e-3, "lora_rounds": 4, "lora_local_steps": 5, "expert_steps": 20,
        "dp_central": {"mode": "central", "clipping_norm": 1.0, "noise_multiplier": 0.5},
        "dp_local": {"mode": "local", "clipping_norm": 1.0, "epsilon": 10.0, "delta": 1e-5}}
TINY = {**REAL, "seq_len": 32, "eval_blocks": 4, "rounds": 2, "local_steps": 4, "select_tokens": 8, "mot_steps": 10,
        "mot": {"top_k": 2, "num_interaction": 1, "latent_dim": 16, "num_heads": 2, "select_tokens": 8,
                "selector_hidden": 16},
        "tune_lr": 2e-2, "mot_lr": 1e-2, "lora": {**REAL["lora"], "r": 4, "alpha": 8.0}, "lora_lr": 1e-2,
        "lora_rounds": 2, "lora_local_steps": 4, "expert_steps": 100}


# MoT rows: (name, streams, steps; None = cfg["mot_steps"]). Untrained gated MoT isolates what training adds.
MOT_VARIANTS = (("MoT gated, untrained", "gated", 0), ("MoT gated (central)", "gated", None),
                ("MoT LoRA streams (central)", "lora", None))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- preparation ----------------------------------------------------------------------------------------------
def prepare_real(work: Path, cfg: dict) -> tuple[str | None, dict, Path]:
    """Corpora and experts: the mesh-bench's (runs/bench) when present, otherwise built and trained here."""
    corpora, experts = {}, work / "experts"
    experts.mkdir(parents=True, exist_ok=True)
    for d in DOMAINS:
        shared = ROOT / "runs" / "bench" / "corpora" / d
        if (shared / "train.jsonl").is_file():
            corpora[d] = shared
        else:
            from expertmesh.corpora.build import build_corpus

            corpora[d] = Path(work / "corpora" / d)
            if not (corpora[d] / "train.jsonl").is_file():
                build_corpus(d, work / "corpora", max_docs=60)
        if (experts / d / "manifest.json").is_file():
            continue
        cached = sorted((ROOT / "runs" / "bench" / "experts").glob(f"{d}-*/manifest.json"))
        if cached:
            log(f"reusing mesh-bench expert {cached[0].parent.name}")
            shutil.copytree(cached[0].parent, experts / d)
        else:
            train_expert_into(experts / d, d, corpora[d], None, cfg)
    return None, corpora, experts


def prepare_tiny(work: Path, cfg: dict) -> tuple[str, dict, Path]:
    from expertmesh.corpora.records import write_records
    from expertmesh.testing import TINY_TEXTS, make_tiny_base

    base = str(make_tiny_base(work / "base"))
    corpora, experts = {}, work / "experts"
    for d in DOMAINS:
        corpora[d] = work / "corpora" / d
        corpora[d].mkdir(parents=True, exist_ok=True)
        t = TINY_TEXTS[d]
        write_records(corpora[d] / "train.jsonl", [{"id": f"{d}/{i}", "text": t[i % 2]} for i in range(30)])
        write_records(corpora[d] / "heldout.jsonl", [{"id": f"{d}/h{i}", "text": " ".join(t)} for i in range(6)])
        if not (experts / d / "manifest.json").is_file():
            train_expert_into(experts / d, d, corpora[d], base, cfg, lr=2e-2,
                              lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj",
                                                                            "down_proj"]})
    return base, corpora, experts


def train_expert_into(out: Path, name: str, data: Path, base: str | None, cfg: dict, *, lr: float = 2e-3,
                      lora: dict | None = None) -> None:
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    log(f"training expert {name} ({cfg['expert_steps']} steps)")
    train_expert(TrainConfig(name=name, owner="bench", data=str(data), out=str(out), base=base,
                             steps=cfg["expert_steps"], batch_size=cfg["batch"], seq_len=cfg["seq_len"], lr=lr,
                             lora=LoraSpec(**(lora or {**cfg["lora"], "dropout": 0.0})), eval_blocks=4,
                             num_pilots=2 if base else 8, overwrite=True), progress=False)


# -- evaluation -----------------------------------------------------------------------------------------------
def heldout(tokenizer, corpora: dict, cfg: dict) -> dict:
    from router_training.task import load_blocks

    return {d: load_blocks(tokenizer, corpora[d], cfg["seq_len"], split="heldout", max_blocks=cfg["eval_blocks"])
            for d in DOMAINS}


def eval_composition(comp: Path, experts: Path, base: str | None, corpora: dict, cfg: dict) -> dict:
    """Per-domain held-out loss on all positions and on positions after the selector prefix (like-for-like with
    MoT, whose selector reads the first select_tokens tokens), plus forward tokens/s."""
    import torch

    from router_training.kinds import load_runtime
    from router_training.mot_train import evaluate_composed_from, evaluate_mot

    rt = load_runtime(comp, experts, base)
    try:
        held = heldout(rt.base.tokenizer, corpora, cfg)
        out = {"all": {}, "after_prefix": {}}
        t0, tokens = time.perf_counter(), 0
        with torch.inference_mode():
            for d, blocks in held.items():
                if hasattr(rt.model, "mot"):
                    out["all"][d] = evaluate_mot(rt.model.mot, blocks, start=0)["loss"]
                    ev = evaluate_mot(rt.model.mot, blocks, start=cfg["select_tokens"])
                    out["after_prefix"][d] = ev["loss"]
                    out.setdefault("primary_share", {})[d] = ev["primary_share"]
                    tokens += 2 * blocks.numel()
                else:
                    out["all"][d] = evaluate_composed_from(rt.model, blocks, start=0)
                    out["after_prefix"][d] = evaluate_composed_from(rt.model, blocks, start=cfg["select_tokens"])
                    tokens += 2 * blocks.numel()
        out["eval_tokens_per_second"] = round(tokens / (time.perf_counter() - t0), 1)
        return out
    finally:
        rt.close()


def eval_references(comp: Path, experts: Path, base: str | None, corpora: dict, cfg: dict) -> dict:
    """Public base alone and each domain's own expert at fixed weight 1 (the oracle)."""
    import torch

    from router_training.kinds import load_runtime
    from router_training.mot_train import evaluate_composed_from

    rt = load_runtime(comp, experts, base)
    try:
        held = heldout(rt.base.tokenizer, corpora, cfg)
        n = len(rt.member_names)
        res = {k: {"all": {}, "after_prefix": {}} for k in ("base", "oracle", "oracle gated")}
        for d, blocks in held.items():
            only_base = torch.zeros(1, n + 1)
            only_base[0, 0] = 1.0
            own = torch.zeros(1, n + 1)
            own[0, rt.member_names.index(d) + 1] = 1.0
            own_gate = own[:, 1:].bool()        # the token gate over {public, own expert}, as its owner trained it
            for name, fw, allowed in (("base", only_base, None), ("oracle", own, None),
                                      ("oracle gated", None, own_gate)):
                for key, start in (("all", 0), ("after_prefix", cfg["select_tokens"])):
                    res[name][key][d] = evaluate_composed_from(rt.model, blocks, start=start, fixed_weights=fw,
                                                               allowed=allowed)
        return res
    finally:
        rt.close()


def eval_lora_package(pkg: Path, base: str | None, corpora: dict, cfg: dict) -> dict:
    import torch

    from expertmesh.base import load_base
    from expertmesh.mixture.lora_io import load_expert
    from expertmesh.mixture.model import ComposedModel
    from router_training.mot_train import evaluate_composed_from

    b = load_base(base)
    model = ComposedModel(b.model, [load_expert(pkg, expected_fingerprint=b.fingerprint)], top_k=1)
    held = heldout(b.tokenizer, corpora, cfg)
    fw = torch.tensor([[0.0, 1.0]])
    out = {"all": {d: evaluate_composed_from(model, x, start=0, fixed_weights=fw) for d, x in held.items()},
           "after_prefix": {d: evaluate_composed_from(model, x, start=cfg["select_tokens"], fixed_weights=fw)
                            for d, x in held.items()}}
    model.close()
    return out


# -- the runs -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config-built model (pipeline check, seconds)")
    ap.add_argument("--out", default=None, help="work dir (default runs/federated-bench[-tiny])")
    ap.add_argument("--skip", default="", help="comma-separated methods to skip (dp-local, mot, fedavg-lora, ...)")
    ap.add_argument("--write-tiny", action="store_true", help="write BENCHMARKS.md even for --tiny")
    args = ap.parse_args()
    cfg = TINY if args.tiny else REAL
    work = Path(args.out or ROOT / "runs" / ("federated-bench-tiny" if args.tiny else "federated-bench"))
    work.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_start = time.time()

    from expertmesh.compose.build import build_composition
    from router_training.central import train_central
    from router_training.client_app import OwnerSetup
    from expertmesh.compose.routers.mot.artifact import read_mot_config
    from router_training.server_app import ServerSetup
    from router_training.simulate import simulate

    base, corpora, experts = (prepare_tiny if args.tiny else prepare_real)(work, cfg)
    comp = work / "comp-domain"
    build_composition("fedbench", experts, "domain", out=comp, overwrite=True,
                      provenance={"base": base} if base else None)
    owners = [OwnerSetup(str(comp), str(experts), str(corpora[d]), base=base, owner=d) for d in DOMAINS]
    tune = {"steps": cfg["local_steps"], "batch_size": cfg["batch"], "seq_len": cfg["seq_len"], "lr": cfg["tune_lr"],
            "eval_blocks": cfg["eval_blocks"]}
    fed = {"rounds": cfg["rounds"], "min_clients": 2, "min_available": 3, "round_timeout": 3600}
    results: dict = {"config": cfg, "methods": {}, "costs": {}}

    def timed(name, fn):
        log(f"{name} ...")
        t0 = time.time()
        out = fn()
        results["costs"].setdefault(name, {})["seconds"] = round(time.time() - t0, 1)
        log(f"{name} done in {time.time() - t0:.0f} s")
        return out

    refs = timed("references", lambda: eval_references(comp, experts, base, corpora, cfg))
    results["methods"].update(refs)
    results["methods"]["untuned router"] = timed("untuned", lambda: eval_composition(comp, experts, base, corpora, cfg))

    def federated(name, dp=None):
        run = work / name.replace(" ", "-")
        setup = ServerSetup(str(comp), str(experts), str(run), base=base, train=tune,
                            federation={**fed, **({"dp": dp} if dp else {})})
        hist = simulate(setup, owners, cpus_per_client=2, total_cpus=2)
        tokens = sum(v["num-examples"] for r in hist["rounds"] for v in r["train"].values())
        norms = [v["update-norm"] for r in hist["rounds"] for v in r["train"].values()]
        results["costs"].setdefault(name, {}).update({"train_tokens": tokens, "rounds": cfg["rounds"], "owners": 3,
                                       "median_update_norm": sorted(norms)[len(norms) // 2],
                                       "dp_noise_std": hist.get("dp_noise_std")})
        results["methods"][name] = eval_composition(Path(hist["output"]["composition"]), experts, base, corpora, cfg)

    timed("federated tuned", lambda: federated("federated tuned"))
    total_steps = cfg["rounds"] * 3 * cfg["local_steps"]
    if "central" not in skip:
        def central():
            h = train_central("router", str(comp), str(experts), [str(corpora[d]) for d in DOMAINS],
                              {**tune, "steps": total_steps}, out=str(work / "central"), base=base)
            results["costs"].setdefault("central tuned", {})["train_tokens"] = h["stats"]["tokens"]
            results["methods"]["central tuned"] = eval_composition(Path(h["output"]["composition"]), experts, base,
                                                                   corpora, cfg)
        timed("central tuned", central)
    if "dp-central" not in skip:
        timed("federated + central DP", lambda: federated("federated + central DP", cfg["dp_central"]))
    if "dp-local" not in skip:
        timed("federated + local DP", lambda: federated("federated + local DP", cfg["dp_local"]))
    if "mot" not in skip:
        def mot(name, streams, steps):
            h = train_central("mot", str(comp), str(experts), [str(corpora[d]) for d in DOMAINS],
                              {"steps": steps, "batch_size": cfg["batch"], "seq_len": cfg["seq_len"],
                               "lr": cfg["mot_lr"]}, out=str(work / name.replace(" ", "-").replace(",", "")),
                              base=base, kind_options={**cfg["mot"], "streams": streams})
            meta = read_mot_config(h["output"]["artifact"])
            results["costs"].setdefault(name, {}).update({
                "train_tokens": h["stats"]["tokens"], "parameters": meta["parameters"], "depths": meta["depths"],
                "train_tokens_per_second": h["stats"]["tokens_per_second"]})
            results["methods"][name] = eval_composition(Path(h["output"]["composition"]), experts, base, corpora, cfg)
        for name, streams, steps in MOT_VARIANTS:
            timed(name, lambda: mot(name, streams, cfg["mot_steps"] if steps is None else steps))

        def mot_federated(name="MoT gated (federated)"):
            # the central MoT's budget, split over rounds x owners (each owner sees only its own domain)
            local = max(1, cfg["mot_steps"] // (cfg["rounds"] * len(DOMAINS)))
            setup = ServerSetup(str(comp), str(experts), str(work / "mot-federated"), base=base, kind="mot",
                                kind_options={**cfg["mot"], "streams": "gated"},
                                train={"steps": local, "batch_size": cfg["batch"], "seq_len": cfg["seq_len"],
                                       "lr": cfg["mot_lr"], "eval_blocks": cfg["eval_blocks"]}, federation=fed)
            hist = simulate(setup, owners, cpus_per_client=2, total_cpus=2)
            out = Path(hist["output"]["composition"])
            results["costs"].setdefault(name, {}).update({
                "train_tokens": sum(v["num-examples"] for r in hist["rounds"] for v in r["train"].values()),
                "parameters": mot_param_count(out), "rounds": cfg["rounds"], "owners": len(DOMAINS)})
            results["methods"][name] = eval_composition(out, experts, base, corpora, cfg)
        timed("MoT gated (federated)", mot_federated)
    if "fedavg-lora" not in skip:
        def fedlora():
            run = work / "fedavg-lora"
            setup = ServerSetup(None, None, str(run), base=base, kind="lora", name="fedavg-lora",
                                kind_options={**cfg["lora"], "name": "fedavg-lora"},
                                train={"steps": cfg["lora_local_steps"], "batch_size": cfg["batch"],
                                       "seq_len": cfg["seq_len"], "lr": cfg["lora_lr"], "eval_blocks": cfg["eval_blocks"]},
                                federation={**fed, "rounds": cfg["lora_rounds"]})
            hist = simulate(setup, [OwnerSetup(None, None, o.data, base=base, owner=o.owner) for o in owners],
                            cpus_per_client=2, total_cpus=2)
            tokens = sum(v["num-examples"] for r in hist["rounds"] for v in r["train"].values())
            results["costs"].setdefault("FedAvg LoRA", {}).update({
                "train_tokens": tokens, "experts_train_tokens": 3 * cfg["expert_steps"] * cfg["batch"] * cfg["seq_len"]})
            results["methods"]["FedAvg LoRA"] = eval_lora_package(Path(hist["output"]["expert"]), base, corpora, cfg)
        timed("FedAvg LoRA", fedlora)

    results["costs"]["router parameters"] = router_param_count(comp)
    results["total_seconds"] = round(time.time() - t_start, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {__import__('torch').__version__}"
    results["date"] = dt.date.today().isoformat()
    (work / "results.json").write_text(json.dumps(results, indent=2))
    log(f"wrote {work / 'results.json'} ({results['total_seconds']:.0f} s)")
    if not args.tiny or args.write_tiny:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from federated_report import write_section

        write_section(ROOT / "BENCHMARKS.md", results, tiny=args.tiny)
        log("updated BENCHMARKS.md (federated-bench section)")


def mot_param_count(comp: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(comp / "router.safetensors"), framework="pt") as f:
        shapes = [f.get_slice(k).get_shape() for k in f.keys() if k.startswith("mot.") and k != "mot.arch"]
    return int(sum(math.prod(s) for s in shapes))


def router_param_count(comp: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(comp / "router.safetensors"), framework="pt") as f:
        rows = f.get_slice("expert_rows").get_shape()
    return int(rows[0] * rows[1] * rows[2] + rows[1] + 1)


if __name__ == "__main__":
    main()
