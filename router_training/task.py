"""Router tuning as plain functions on a ComposedModel (no Flower here; the Flower apps are thin shells).

What trains: the composition's per-layer expert rows ``expert_rows`` [L, N, d] and, optionally, a per-entry
logit bias [N+1] (entry 0 = the public base). The base, the experts' LoRA factors and the public anchor rows
stay frozen; the loss is the ordinary next-token loss of the composed model, so the gradient reaches the rows
through the gate of every layer (see expertmesh/mixture/gate.py).

Why Adam with an absolute lr works whatever the rows' scale: the gate uses h~ = h / rms(h) and divides by
sqrt(d), so a step of ``lr`` on every coordinate of row j moves its logit by at most lr * sqrt(d)
(0.01 * sqrt(576) = 0.24 for SmolLM2), independent of how large the FlexOlmo-initialised rows are.

The arrays that travel (FedAvg averages them): ``{"expert_rows": [L, N, d] fp32, "bias": [N+1] fp32}``, always
both keys in this order, so Flower's clipping mods can compare what was sent with what came back.

    from router_training.task import tune_router, evaluate_loss, router_arrays
    stats = tune_router(composed, blocks, TuneConfig(steps=8))
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from expertmesh.errors import ConfigError
from expertmesh.expert.blocks import mean_token_loss, pack_blocks
from expertmesh.precision import use_bf16 as _use_bf16
from router_training.config import TuneConfig

ROUTER_KEYS = ("expert_rows", "bias")


# -- the arrays that travel -------------------------------------------------------------------------------
def router_arrays(composed) -> dict[str, torch.Tensor]:
    """The tunable router state as detached fp32 tensors, in the fixed key order."""
    r = composed.router
    n_entries = r.expert_rows.shape[1] + 1
    bias = r.bias if r.bias is not None else torch.zeros(n_entries)
    return {"expert_rows": r.expert_rows.detach().float().clone().contiguous(),
            "bias": bias.detach().float().clone().contiguous()}


def set_router_arrays(composed, arrays: Mapping[str, torch.Tensor]) -> None:
    """Load router arrays into the model (in place when the router is trainable, so optimisers keep working)."""
    r = composed.router
    missing = [k for k in ROUTER_KEYS if k not in arrays]
    if missing:
        raise ConfigError(f"router arrays lack {missing}; expected keys {list(ROUTER_KEYS)}")
    rows = torch.as_tensor(arrays["expert_rows"]).float()
    bias = torch.as_tensor(arrays["bias"]).float()
    L, N, d = r.expert_rows.shape
    if tuple(rows.shape) != (L, N, d):
        raise ConfigError(f"expert_rows has shape {tuple(rows.shape)}, this composition needs {(L, N, d)} "
                          "(same base and the same experts in the same order)")
    if tuple(bias.shape) != (N + 1,):
        raise ConfigError(f"bias has shape {tuple(bias.shape)}, this composition needs {(N + 1,)}")
    with torch.no_grad():
        if isinstance(r.expert_rows, nn.Parameter):
            r.expert_rows.copy_(rows)
        else:
            r.expert_rows = rows.clone()
        if isinstance(r.bias, nn.Parameter):
            r.bias.copy_(bias)
        else:
            r.bias = bias.clone()


def make_router_trainable(composed, *, train_bias: bool = True) -> list[nn.Parameter]:
    """Turn the router's rows (and bias) into Parameters; everything else stays frozen."""
    r = composed.router
    if not isinstance(r.expert_rows, nn.Parameter):
        r.expert_rows = nn.Parameter(r.expert_rows.detach().float().clone())
    if r.bias is None:
        r.bias = torch.zeros(r.expert_rows.shape[1] + 1)
    if train_bias and not isinstance(r.bias, nn.Parameter):
        r.bias = nn.Parameter(r.bias.detach().float().clone())
    if not train_bias and isinstance(r.bias, nn.Parameter):
        r.bias = r.bias.detach().clone()
    params = [r.expert_rows] + ([r.bias] if train_bias else [])
    for p in params:
        p.requires_grad_(True)
    return params


def freeze_router(composed) -> None:
    """Back to plain tensors (for inference or saving)."""
    r = composed.router
    r.expert_rows = r.expert_rows.detach().clone()
    if r.bias is not None:
        r.bias = r.bias.detach().clone()


def update_norm(old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of new - old over all router arrays (what DP clipping bounds)."""
    return math.sqrt(sum(float((new[k].float() - old[k].float()).pow(2).sum()) for k in ROUTER_KEYS))


# -- data -------------------------------------------------------------------------------------------------
def load_blocks(tokenizer, data: str | Path, seq_len: int, *, split: str = "train",
                max_blocks: int | None = None) -> torch.Tensor:
    """[n, seq_len] token blocks from a corpus dir (train.jsonl/heldout.jsonl), a .jsonl or a .txt file."""
    from expertmesh.corpora.records import load_texts

    texts = load_texts(data, split=split) if Path(data).is_dir() else load_texts(data)
    return pack_blocks(tokenizer, texts, seq_len, max_blocks=max_blocks, what=f"{split} data {data}")


def pool_blocks(parts: Iterable[torch.Tensor], seed: int = 0) -> torch.Tensor:
    """Concatenate several owners' blocks and shuffle (the central, pooled-data upper bound)."""
    blocks = torch.cat(list(parts), 0)
    perm = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return blocks[perm]


# -- training and evaluation ----------------------------------------------------------------------------
def tune_router(composed, blocks: torch.Tensor, cfg: TuneConfig, *, seed: int | None = None,
                allowed: torch.Tensor | None = None) -> dict:
    """``cfg.steps`` Adam steps on the router only, batches drawn from ``blocks`` with a seeded generator.

    Returns {"steps", "tokens", "seconds", "tokens_per_second", "first_loss", "last_loss"}; the model's router
    holds the tuned arrays afterwards (read them with ``router_arrays``).
    """
    if len(blocks) == 0:
        raise ConfigError("no training blocks: the owner's data is smaller than one block; lower seq_len")
    params = make_router_trainable(composed, train_bias=cfg.train_bias)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    use_bf16 = _use_bf16(cfg.precision)
    was_training = composed.training
    composed.train()   # no dropout in frozen experts at tuning time (dropout=0 when loaded); train() is harmless
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for _ in range(cfg.steps):
            idx = torch.randint(len(blocks), (min(cfg.batch_size, len(blocks)),), generator=gen)
            ids = blocks[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = composed(ids, labels=ids, allowed=allowed).loss
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        composed.train(was_training)
    seconds = time.perf_counter() - t0
    tokens = cfg.steps * min(cfg.batch_size, len(blocks)) * blocks.shape[1]
    return {"steps": cfg.steps, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
            "first_loss": losses[0] if losses else float("nan"), "last_loss": losses[-1] if losses else float("nan")}


def evaluate_loss(composed, blocks: torch.Tensor, *, batch_size: int = 8,
                  allowed: torch.Tensor | None = None) -> float:
    """Mean next-token loss of the composed model on ``blocks`` (router as it is now)."""
    was_training = composed.training
    composed.eval()
    try:
        return mean_token_loss(lambda ids: composed(ids, allowed=allowed).logits, blocks, batch_size=batch_size)
    finally:
        composed.train(was_training)


def evaluate_domains(composed, heldout: Mapping[str, torch.Tensor], *, batch_size: int = 8) -> dict[str, float]:
    """Held-out loss per domain plus their unweighted mean under "mean"."""
    out = {name: round(evaluate_loss(composed, blocks, batch_size=batch_size), 5) for name, blocks in heldout.items()}
    out["mean"] = round(sum(out.values()) / max(len(out), 1), 5)
    return out


def central_tune(composed, pooled: torch.Tensor, cfg: TuneConfig, *, total_steps: int) -> dict:
    """Tune on pooled data with the same total step budget as a federation (rounds x clients x steps)."""
    central = TuneConfig.from_dict({**cfg.to_dict(), "steps": total_steps})
    return tune_router(composed, pooled, central)
