"""Owner training speed against forward scoring, in one run, on the real base (issue 11, item 2).

Forward plus backward is ~3x the FLOPs of a forward, so train tok/s / forward tok/s tends to ~0.33 when the
step is all matmul; what a step spends beyond that (Python per module, optimizer, re-stacking factors) pulls it
lower. Per batch shape it times, on the same process and threads:
  - forward scoring: the owner's composed model (base + 1 LoRA expert + 2-way gate), inference mode, bf16 autocast;
  - training: ``train_expert`` steps (forward, backward, clip, AdamW), the first step left out as warm-up.

Run (default base SmolLM2-135M; ~4 min on 2 idle cores):
    python benchmarks/train_speed.py --data runs/scale/corpora/code.email
Tiny CPU variant (seconds; figures meaningless):
    python benchmarks/train_speed.py --tiny
Writes benchmarks/scale-bench/train_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # this checkout's expertmesh, not an installed copy


def _shape(s: str) -> tuple[int, int]:
    b, t = s.lower().split("x")
    return int(b), int(t)


def forward_speed(model, blocks, batch: int, reps: int, bf16: bool) -> float:
    import torch

    ids = blocks[:batch]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(ids)                                           # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            model(ids)
    return reps * ids.numel() / (time.perf_counter() - t0)


def train_speed(cfg, base) -> tuple[float, dict]:
    from expertmesh.expert.train import train_expert

    stamps: list[float] = []
    result = train_expert(cfg, base=base, progress=False, on_step=lambda step, loss: stamps.append(time.perf_counter()))
    tokens = cfg.batch_size * cfg.seq_len
    # stamps[i] is the end of step i: steps 1..n-1 are timed, step 0 (allocations, first autocast) is warm-up.
    rate = (len(stamps) - 1) * tokens / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return rate, result.manifest.training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="corpus domain directory (train.jsonl)")
    ap.add_argument("--shapes", default="4x128,8x128,4x256", help="batch x seq_len, comma-separated")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "scale-bench" / "train_speed.json"))
    args = ap.parse_args()

    import torch

    from expertmesh.base import load_base
    from expertmesh.expert.blocks import pack_blocks
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.precision import bf16_supported
    from expertmesh.mixture.lora_io import load_expert
    from expertmesh.mixture.model import ComposedModel
    from expertmesh.corpora.records import load_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    work = ROOT / "runs" / "train-speed"
    base_spec, data = None, args.data
    if args.tiny:
        from benchmarks.mesh.data import write_tiny_corpora
        from expertmesh.testing import make_tiny_base

        base_spec = str(make_tiny_base(work / "tiny-base"))
        data = str(write_tiny_corpora(work / "tiny-corpora", ["code"])["code"])
        args.shapes, args.steps, args.reps = "2x32", 3, 2
    if not data:
        ap.error("give --data DIR or --tiny")
    base = load_base(base_spec)
    bf16 = bf16_supported()
    load0 = os.getloadavg()[0]
    rows = []
    for b, t in map(_shape, args.shapes.split(",")):
        cfg = TrainConfig(name="speed", owner="bench", data=str(Path(data) / "train.jsonl"), out=str(work / "expert"),
                          base=base_spec, steps=args.steps, batch_size=b, seq_len=t, lr=2e-3, warmup_steps=1,
                          lora=LoraSpec(r=8, alpha=16.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
                          resume=False, overwrite=True, num_pilots=2)
        train_tps, summary = train_speed(cfg, base)
        blocks = pack_blocks(base.tokenizer, load_texts(cfg.data), t, max_blocks=b)
        expert = load_expert(work / "expert")
        composed = ComposedModel(base.model, [expert], top_k=2, anchor_rows=expert.anchor_rows)
        try:
            fwd_tps = forward_speed(lambda ids: composed(ids).logits, blocks, b, args.reps, bf16)
        finally:
            composed.close()
        base_tps = forward_speed(lambda ids: base.model(input_ids=ids).logits, blocks, b, args.reps, bf16)
        row = {"batch": b, "seq_len": t, "train_tokens_per_s": round(train_tps, 1),
               "forward_tokens_per_s": round(fwd_tps, 1), "base_forward_tokens_per_s": round(base_tps, 1),
               "ratio": round(train_tps / fwd_tps, 3), "precision": summary.get("precision")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"format": "expertmesh-train-speed/1", "base": base_spec or "smollm2-135m-instruct", "data": data,
           "steps": args.steps, "threads": torch.get_num_threads(), "load_average_1min": [round(load0, 2),
                                                                                         round(os.getloadavg()[0], 2)],
           "rows": rows, "note": "ratio limit ~0.33 (forward + backward ~ 3x a forward's FLOPs)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
