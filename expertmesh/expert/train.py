"""Owner-side expert training (FlexOlmo-style, with a LoRA expert).

The owner's expert is paired with the frozen public base through a two-way gate in every decoder layer:
entry 0 is the public anchor row (frozen), entry 1 the owner's router row, initialised from the mean hidden
state of the owner's data and trained with the adapter. Only the LoRA factors and the router row train.

Budget arithmetic for the defaults: 50 steps x 8 blocks x 256 tokens = 102,400 tokens, ~6 min at ~290 tok/s
(SmolLM2-135M, bf16 autocast, 2 cores). Tiny CPU variant for a smoke run:
    expertmesh expert train --data corpus/law --name law --owner acme --steps 2 --batch-size 2 --seq-len 32 \
        --base "$(python -c 'from expertmesh.testing import make_tiny_base; print(make_tiny_base("/tmp/tb"))')"
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from expertmesh.base import Base, load_base
from expertmesh.errors import ConfigError
from expertmesh.expert.blocks import mean_token_loss, micro_batches, pack_blocks
from expertmesh.expert.canaries import canary_path, insert_canaries, make_canaries, save_canaries
from expertmesh.expert.dp import accounted_epsilon, dp_step, plan_dp, poisson_batch
from expertmesh.expert.config import TrainConfig
from expertmesh.expert.digest import data_digest
from expertmesh.expert.manifest import ExpertManifest, SignatureSpec
from expertmesh.expert.package import finalize_manifest, save_signature
from expertmesh.expert.signature import mean_layer_inputs, passages, pilot_embeddings, public_anchor_rows
from expertmesh.fileio import atomic_directory, write_json_atomic
from expertmesh.mixture.lora_io import ExpertWeights, save_peft_adapter
from expertmesh.mixture.model import ComposedModel, adaptable_modules, resolve_targets
from expertmesh.precision import use_bf16 as resolve_bf16


@dataclass
class TrainResult:
    out: Path
    manifest: ExpertManifest


def _init_lora(model: nn.Module, paths: list[str], r: int, seed: int) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    """PEFT's default init: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the expert starts as the base."""
    if r > min(min(m.in_features, m.out_features) for m in adaptable_modules(model).values()):
        raise ConfigError(f"lora.r={r} is larger than the smallest adapted layer dimension; lower --rank")
    gen = torch.Generator().manual_seed(seed)
    linears = adaptable_modules(model)
    out = {}
    for p in paths:
        m = linears[p]
        a = torch.empty(r, m.in_features)
        bound = 1.0 / math.sqrt(m.in_features)  # kaiming_uniform_(a=sqrt(5)) on [r, in] gives 1/sqrt(fan_in)
        a.uniform_(-bound, bound, generator=gen)
        out[p] = (nn.Parameter(a), nn.Parameter(torch.zeros(m.out_features, r)))
    return out


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))


def _checkpoint_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    return out.parent / f".{out.name}.checkpoint"


def train_expert(cfg: TrainConfig, *, base: Base | None = None, progress: bool = True,
                 on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train one expert and write its package to ``cfg.out`` (complete or absent)."""
    from expertmesh.corpora.records import load_texts

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output {out} already exists; choose another --out or pass --overwrite")
    train_texts = load_texts(cfg.data)          # a missing or empty file fails here, before the base loads
    heldout_texts = load_texts(cfg.heldout) if cfg.heldout else None
    base = base or load_base(cfg.base)
    model, tok = base.model, base.tokenizer
    paths = resolve_targets(model, cfg.lora.target_modules)
    canary_set = make_canaries(cfg.canaries, seed=cfg.seed, repeats=cfg.canary_repeats) if cfg.canaries else None
    stream = insert_canaries(train_texts, canary_set) if canary_set else train_texts
    blocks = pack_blocks(tok, stream, cfg.seq_len, what=f"training data {cfg.data}")
    dp_plan = (plan_dp(cfg.dp_epsilon, cfg.dp_delta, cfg.dp_clip, batch_size=cfg.batch_size,
                       num_blocks=len(blocks), steps=cfg.steps) if cfg.dp_epsilon is not None else None)
    heldout = (pack_blocks(tok, heldout_texts, cfg.seq_len, max_blocks=cfg.eval_blocks,
                           what=f"held-out data {cfg.heldout}") if cfg.heldout else None)

    torch.manual_seed(cfg.seed)
    anchor = public_anchor_rows(base)
    # Under DP the row starts at the public anchor: the mean hidden state of the owner's blocks is not private.
    init_rows = anchor.clone() if dp_plan else mean_layer_inputs(model, blocks[:16])
    lora = _init_lora(model, paths, cfg.lora.r, cfg.seed)
    row = nn.Parameter(init_rows[:, None, :].clone())                           # [L, 1, d]
    expert = ExpertWeights(name=cfg.name, lora={p: (a, b) for p, (a, b) in lora.items()},
                           scaling=cfg.lora.scaling, router_rows=init_rows, anchor_rows=anchor,
                           pilots=torch.zeros(1, 1))
    composed = ComposedModel(model, [expert], top_k=2, anchor_rows=anchor, expert_rows=row,
                             dropout=cfg.lora.dropout)
    try:
        summary = _train_loop(cfg, composed, lora, row, blocks, progress, on_step, dp_plan)
        composed.eval()
        metrics = {}
        if heldout is not None:
            base_loss = mean_token_loss(lambda ids: composed(ids, allowed=torch.zeros(1, dtype=torch.bool)).logits,
                                        heldout)
            expert_loss = mean_token_loss(lambda ids: composed(ids).logits, heldout)
            metrics = {"heldout_blocks": len(heldout), "seq_len": cfg.seq_len,
                       "base_loss": round(base_loss, 4), "expert_loss": round(expert_loss, 4),
                       "base_ppl": round(math.exp(base_loss), 3), "expert_ppl": round(math.exp(expert_loss), 3)}
    finally:
        composed.close()

    from expertmesh.embedder import get_embedder

    embedder = get_embedder(cfg.embedder)
    pilots = torch.from_numpy(pilot_embeddings(embedder.embed(passages(train_texts)), cfg.num_pilots, cfg.seed))
    trained = {p: (a.detach(), b.detach()) for p, (a, b) in lora.items()}
    manifest = ExpertManifest(
        name=cfg.name, owner=cfg.owner, base_fingerprint=base.fingerprint, lora=cfg.lora,
        signature=SignatureSpec(num_layers=base.num_layers, hidden_size=base.hidden_size,
                                num_pilots=int(pilots.shape[0]), embed_dim=int(pilots.shape[1]),
                                embedder=embedder.name),
        domain_tags=cfg.domain_tags or [cfg.name], licence=cfg.licence, description=cfg.description,
        training={"config": cfg.to_dict(), "base": str(cfg.base or "default"), **summary,
                  "torch": torch.__version__, "train_blocks": len(blocks), "data_digest": data_digest(train_texts),
                  **({"canaries": {"count": cfg.canaries, "repeats": cfg.canary_repeats,
                                   "sha256": canary_set.digest()}} if canary_set else {}),
                  **({"dp": dp_plan.to_manifest(accounted_epsilon(dp_plan, cfg.steps))} if dp_plan else {})},
        metrics=metrics,
    )
    with atomic_directory(out, overwrite=cfg.overwrite) as tmp:
        save_peft_adapter(tmp, trained, cfg.lora, base_name=str(base.path))  # a dir AutoPeft resolves
        save_signature(tmp, row.detach()[:, 0, :], anchor, pilots)
        finalize_manifest(tmp, manifest)
    if canary_set:
        save_canaries(out, canary_set)   # beside the package, never in it: it stays on the owner's machine
    else:
        canary_path(out).unlink(missing_ok=True)   # a stale file from an earlier run would mislead the audit
    shutil.rmtree(_checkpoint_dir(cfg), ignore_errors=True)
    return TrainResult(out=out, manifest=manifest)


def _train_loop(cfg, composed, lora, row, blocks, progress, on_step, dp_plan=None) -> dict:
    from tqdm import tqdm
    from safetensors.torch import load_file, save_file

    params = [p for a, b in lora.values() for p in ((a, b) if cfg.train_lora_a else (b,))]
    if not cfg.train_lora_a:
        for a, _ in lora.values():
            a.requires_grad_(False)
    groups = [{"params": params, "lr": cfg.lr}]
    if cfg.router_lr > 0:
        groups.append({"params": [row], "lr": cfg.router_lr})
    else:
        row.requires_grad_(False)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    trainable = [p for g in groups for p in g["params"]]
    base_lrs = [g["lr"] for g in opt.param_groups]
    use_bf16 = resolve_bf16(cfg.precision)
    ckpt = _checkpoint_dir(cfg)
    start, losses = 0, []
    if cfg.resume and (ckpt / "progress.json").is_file():
        state = json.loads((ckpt / "progress.json").read_text())
        if state.get("digest") != cfg.digest():
            raise ConfigError(f"checkpoint {ckpt} was made with another config; delete it or pass --no-resume")
        tensors = load_file(str(ckpt / "trainable.safetensors"))
        with torch.no_grad():
            for p, (a, b) in lora.items():
                a.copy_(tensors[f"{p}.A"]); b.copy_(tensors[f"{p}.B"])
            row.copy_(tensors["router_row"])
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        start, losses = state["step"], state["losses"]
    composed.train()
    tokens_per_step = cfg.batch_size * cfg.seq_len
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc=f"train {cfg.name}")
    for step in bar:
        # Batch and dropout depend only on (seed, step), so a resumed run sees exactly what it would have.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        for g, base_lr in zip(opt.param_groups, base_lrs):
            g["lr"] = base_lr * _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        if dp_plan is not None:
            def loss_of(x):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    return composed(x, labels=x).loss
            ids = blocks[poisson_batch(len(blocks), dp_plan.sample_rate, gen)]
            loss_value = dp_step(loss_of, ids, trainable, dp_plan, len(blocks), gen, per_sample=composed.per_sample)
        else:
            ids = blocks[torch.randint(len(blocks), (cfg.batch_size,), generator=gen)]
            loss_value = 0.0
            for part in micro_batches(ids):       # the batch's mean loss, accumulated part by part
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = composed(part, labels=part).loss
                (loss.float() * (len(part) / len(ids))).backward()
                loss_value += float(loss.detach()) * len(part) / len(ids)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss_value, 4))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step:
            on_step(step, losses[-1])
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(ckpt, cfg, lora, row, opt, step + 1, losses, save_file)
    elapsed = time.perf_counter() - t0
    done = cfg.steps - start
    return {"steps": cfg.steps, "tokens": cfg.steps * tokens_per_step, "seconds_this_run": round(elapsed, 1),
            "tokens_per_second": round(done * tokens_per_step / elapsed, 1) if elapsed > 0 and done else None,
            "resumed_from_step": start, "precision": "bf16" if use_bf16 else "fp32",
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}


def _save_checkpoint(ckpt: Path, cfg, lora, row, opt, step, losses, save_file) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"{p}.{n}": t.detach().contiguous() for p, (a, b) in lora.items() for n, t in (("A", a), ("B", b))}
    tensors["router_row"] = row.detach().contiguous()
    save_file(tensors, str(tmp / "trainable.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")  # tensors and numbers only: loads with weights_only=True
    write_json_atomic(tmp / "progress.json", {"step": step, "losses": losses, "digest": cfg.digest()})
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)
