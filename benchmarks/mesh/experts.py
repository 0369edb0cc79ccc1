"""Train or reuse experts of equal budget per domain, cached under <out>/experts by the library's expert-cache
key (expertmesh/expert/cache.py: config digest + base fingerprint + a digest of the training data)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.mesh.config import BenchConfig
from expertmesh.expert.cache import cache_key


def lora_targets(cfg: BenchConfig) -> list[str]:
    """The projections every bench LoRA adapts (the experts, the pooled LoRA, the FedAvg LoRA)."""
    return ["q_proj", "v_proj"] if cfg.mode == "tiny" else ["q_proj", "k_proj", "v_proj", "o_proj"]


def train_config(cfg: BenchConfig, name: str, data: Path, out: Path, base_spec: str | None, steps: int,
                 heldout: Path | None = None):
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec

    targets = lora_targets(cfg)
    return TrainConfig(name=name, owner="bench", data=str(data), heldout=str(heldout) if heldout else None,
                       out=str(out), base=base_spec, steps=steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                       lr=cfg.lr, warmup_steps=min(5, max(steps // 4, 0)), seed=cfg.seed,
                       lora=LoraSpec(r=cfg.rank, alpha=2.0 * cfg.rank, dropout=0.0, target_modules=targets),
                       num_pilots=4 if cfg.mode == "tiny" else 8, eval_blocks=cfg.eval_blocks,
                       resume=False, overwrite=True)


def get_expert(cfg: BenchConfig, base, base_spec: str | None, name: str, data: Path, cache: Path, *,
               steps: int, log=print) -> tuple[Path, dict]:
    """Path of a trained package (cached or freshly trained) and a record of how it was obtained."""
    from expertmesh.expert.train import train_expert

    probe = train_config(cfg, name, data, cache / "_probe", base_spec, steps)
    key = cache_key(probe, base.fingerprint)
    out = cache / key
    rec = {"name": name, "key": key, "steps": steps,
           "tokens": steps * cfg.batch_size * cfg.seq_len}
    if cfg.reuse and (out / "manifest.json").is_file():
        log(f"[bench] expert {name}: reused cached {out}")
        tr = manifest_summary(out)
        return out, {**rec, "cached": True, "train_seconds": tr.get("seconds_this_run"),
                     "first_loss": tr.get("first_loss"), "final_loss": tr.get("final_loss")}
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"[bench] expert {name}: training {steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens")
    result = train_expert(train_config(cfg, name, data, out, base_spec, steps), base=base, progress=False)
    secs = time.perf_counter() - t0
    tr = result.manifest.training
    log(f"[bench] expert {name}: done in {secs:.0f}s (loss {tr.get('first_loss')} -> {tr.get('final_loss')})")
    return out, {**rec, "cached": False, "train_seconds": round(secs, 1),
                 "first_loss": tr.get("first_loss"), "final_loss": tr.get("final_loss"),
                 "tokens_per_second": tr.get("tokens_per_second")}


def manifest_summary(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text()).get("training", {})
