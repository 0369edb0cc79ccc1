"""Baseline: ONE LoRA trained by plain FedAvg across all owners (FlowerTune-style), for the benchmark to compare
modular composition (one expert per owner + router) with federated monolithic training.

Each round every sampled owner starts from the global LoRA factors, runs ``steps`` AdamW steps on its own
blocks (fresh optimiser each round, as in FlowerTune), and returns its factors; the server averages A and B
separately, weighted by tokens trained. (Averaging A and B separately is what FlowerTune does; it is not the
average of the products B A, one known weakness of the method.) Same budget as the experts: if each of N
owners trained its expert for S steps x B blocks x T tokens, give the federation rounds x clients x
local_steps x B x T = N x S x B x T tokens.

The result is a normal expert package (PEFT adapter + signature + manifest, via the expert package save
functions): ``PeftModel.from_pretrained(base, dir)`` loads it, and ``expertmesh expert eval`` evaluates it.
Its router row is the public anchor row (it has no domain of its own) and its pilots come from the public
calibration text; used as a monolithic model it runs with the LoRA always on (fixed weight 1).

Runs through the same Flower apps as router tuning (kind "lora"; the version owners must agree on is the
base fingerprint instead of a composition digest):
    expertmesh federate fedavg-lora --base DIR --clients corpora/law,corpora/code --rounds 3 --out runs/fedlora
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from expertmesh.errors import ConfigError
from expertmesh.expert.manifest import LoraSpec

FIXED_ON = torch.tensor([[0.0, 1.0]])        # gate weights [public, lora]: the LoRA always fully on


def lora_spec(options: dict) -> LoraSpec:
    keys = {"r", "alpha", "dropout", "target_modules"}
    return LoraSpec(**{k: v for k, v in options.items() if k in keys})


def build_lora_model(base, options: dict):
    """A ComposedModel with one trainable LoRA (PEFT init, seeded so every party starts from the same factors)."""
    from expertmesh.expert.train import _init_lora
    from expertmesh.mixture.lora_io import ExpertWeights
    from expertmesh.mixture.model import ComposedModel, resolve_targets

    spec = lora_spec(options)
    paths = resolve_targets(base.model, spec.target_modules)
    lora = _init_lora(base.model, paths, spec.r, int(options.get("init_seed", 0)))
    L, d = base.num_layers, base.hidden_size
    expert = ExpertWeights(name=str(options.get("name", "fedavg-lora")), lora=dict(lora), scaling=spec.scaling,
                           router_rows=torch.zeros(L, d), anchor_rows=torch.zeros(L, d), pilots=torch.zeros(1, 1))
    composed = ComposedModel(base.model, [expert], top_k=1, dropout=spec.dropout)
    composed.lora_params = lora          # path -> (A, B) Parameters
    composed.lora_spec = spec
    return composed


def lora_arrays(model) -> dict[str, torch.Tensor]:
    out = {}
    for p, (a, b) in model.lora_params.items():
        out[f"{p}.A"] = a.detach().float().clone().contiguous()
        out[f"{p}.B"] = b.detach().float().clone().contiguous()
    return out


def set_lora_arrays(model, arrays: dict) -> None:
    with torch.no_grad():
        for p, (a, b) in model.lora_params.items():
            for name, t in (("A", a), ("B", b)):
                src = torch.as_tensor(arrays[f"{p}.{name}"])
                if tuple(src.shape) != tuple(t.shape):
                    raise ConfigError(f"LoRA array {p}.{name} has shape {tuple(src.shape)}, expected {tuple(t.shape)}")
                t.copy_(src)


def train_lora(model, blocks: torch.Tensor, cfg, *, seed: int) -> dict:
    """``cfg.steps`` AdamW steps on the LoRA factors (cfg: TuneConfig), LoRA fully on; grad-norm clip 1."""
    from expertmesh.precision import use_bf16 as _use_bf16

    params = [t for pair in model.lora_params.values() for t in pair]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    use_bf16 = _use_bf16(cfg.precision)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        ids = blocks[torch.randint(len(blocks), (min(cfg.batch_size, len(blocks)),), generator=gen)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(ids, labels=ids, fixed_weights=FIXED_ON.expand(len(ids), -1)).loss
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    seconds = time.perf_counter() - t0
    tokens = cfg.steps * min(cfg.batch_size, len(blocks)) * blocks.shape[1]
    return {"steps": cfg.steps, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
            "first_loss": losses[0] if losses else float("nan"), "last_loss": losses[-1] if losses else float("nan")}


def evaluate_lora(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    from expertmesh.expert.blocks import mean_token_loss

    model.eval()
    return mean_token_loss(lambda ids: model(ids, fixed_weights=FIXED_ON.expand(len(ids), -1)).logits, blocks,
                           batch_size=batch_size)


def save_lora_package(model, base, out: str | Path, *, name: str = "fedavg-lora", owner: str = "federation",
                      training: dict | None = None, num_pilots: int = 4, embedder: str | None = None) -> Path:
    """Write the trained LoRA as a normal expert package (complete or absent)."""
    from expertmesh.embedder import get_embedder
    from expertmesh.expert.manifest import ExpertManifest, SignatureSpec
    from expertmesh.expert.package import finalize_manifest, save_signature
    from expertmesh.expert.signature import anchor_rows, passages, pilot_embeddings, public_calibration_texts
    from expertmesh.fileio import atomic_directory
    from expertmesh.mixture.lora_io import save_peft_adapter

    out = Path(out)
    anchor = anchor_rows(base.model, base.tokenizer)
    emb = get_embedder(embedder)
    pilots = torch.from_numpy(pilot_embeddings(emb.embed(passages(public_calibration_texts(), words=32)), num_pilots))
    spec: LoraSpec = model.lora_spec
    manifest = ExpertManifest(
        name=name, owner=owner, base_fingerprint=base.fingerprint, lora=spec,
        signature=SignatureSpec(num_layers=base.num_layers, hidden_size=base.hidden_size,
                                num_pilots=int(pilots.shape[0]), embed_dim=int(pilots.shape[1]), embedder=emb.name),
        domain_tags=["fedavg"], description="one LoRA trained by plain FedAvg across owners (baseline)",
        training={"method": "fedavg-lora", **(training or {}), "torch": torch.__version__})
    with atomic_directory(out, overwrite=True) as tmp:
        save_peft_adapter(tmp, {p: (a.detach(), b.detach()) for p, (a, b) in model.lora_params.items()}, spec,
                          base_name=str(base.path))
        save_signature(tmp, anchor.clone(), anchor, pilots)
        finalize_manifest(tmp, manifest)
    return out
