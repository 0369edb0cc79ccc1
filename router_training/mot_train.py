"""Training and evaluation of Mixture-of-Thoughts (plain functions; the Flower apps reuse them per owner).

One training step on a batch of B blocks (N experts in the composition, K active):
  1. capture (no grad): all N experts run as N stacked copies; the hidden state after each interaction depth
     is kept, and each stream's own loss per block gives the selector its target, softmax(-loss / tau);
  2. selection: the selector scores the blocks' prefixes; the primary is the best expert for the block with
     probability ``teacher_forcing`` (so interaction layers learn with good primaries), else the selector's pick;
     the peers are the selector's next K-1;
  3. primary pass (grad): only the primary copy runs, cross-attending to the captured peers at each depth.
  loss = LM loss of the primary + selector_weight * cross-entropy(selector, target).
Cost per step: N forward (no grad) + 1 forward/backward; for N=3 about 2.5x one router-tuning step.

    stats = train_mot(mot, blocks, MoTTrainConfig(steps=20))
    print(evaluate_mot(mot, heldout_blocks))

The model, its router type and its artifact (save_mot, read_mot_config) are core: expertmesh.compose.routers.mot.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from expertmesh.compose.routers.mot.model import MoTModel, _Ctx, lm_loss
from expertmesh.errors import ConfigError
from expertmesh.validate import check_choice, check_float, check_int, from_known_fields


@dataclass
class MoTTrainConfig:
    steps: int = 20
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 2e-3
    seed: int = 0
    precision: str = "auto"
    teacher_forcing: float = 0.5     # probability the block's best expert is the primary during training
    selector_weight: float = 1.0
    target_temperature: float = 0.1  # nats; softmax(-loss / tau) over experts is the selector's target
    eval_blocks: int = 16

    def __post_init__(self) -> None:
        check_int("steps", self.steps, lo=0, hi=100_000)
        check_int("batch_size", self.batch_size, lo=1, hi=4096)
        check_int("seq_len", self.seq_len, lo=8, hi=32768)
        check_float("lr", self.lr, lo=0.0, lo_open=True, hi=10.0)
        check_int("seed", self.seed, lo=0)
        check_choice("precision", self.precision, ["auto", "bf16", "fp32"])
        check_float("teacher_forcing", self.teacher_forcing, lo=0.0, hi=1.0)
        check_float("selector_weight", self.selector_weight, lo=0.0)
        check_float("target_temperature", self.target_temperature, lo=0.0, lo_open=True)
        check_int("eval_blocks", self.eval_blocks, lo=1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "MoTTrainConfig":
        return from_known_fields(cls, d)


# -- training --------------------------------------------------------------------------------------------------
def _capture(mot: MoTModel, ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """All candidates, pure, no grad: hidden states at the interaction depths and per-block losses [C, B]."""
    N, B = mot.num_candidates, ids.shape[0]
    experts = torch.arange(N)[:, None].expand(N, B)
    ctx = _Ctx("capture", experts, torch.ones(N, B), torch.ones(ids.shape, dtype=torch.long), captured={})
    with torch.no_grad():
        hidden = mot.run_decoder(ids.repeat(N, 1), experts, ctx).last_hidden_state
        head = mot.composed.base_model.get_output_embeddings()
        losses = torch.stack([lm_loss(head(hidden[c * B:(c + 1) * B]), ids, reduction="none") for c in range(N)])
    return ctx.captured, losses


def mot_step(mot: MoTModel, ids: torch.Tensor, cfg: MoTTrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    B = ids.shape[0]
    captured, expert_losses = _capture(mot, ids)                                   # [C, B]
    scores = mot.scores(ids)
    target = torch.softmax(-expert_losses.t() / cfg.target_temperature, dim=1)     # [B, C]
    sel_loss = -(target * torch.log_softmax(scores, dim=1)).sum(1).mean()
    best = target.argmax(1)
    forced = torch.rand(B, generator=gen) < cfg.teacher_forcing
    primary = torch.where(forced, best, scores.detach().argmax(1))
    idx, w = mot.select(scores, primary)
    experts = idx.t().contiguous()
    ctx = _Ctx("primary", experts, w.t(), torch.ones(ids.shape, dtype=torch.long), captured=captured)
    hidden = mot.run_decoder(ids, experts[:1], ctx).last_hidden_state
    logits = mot.composed.base_model.get_output_embeddings()(hidden)
    loss_lm = lm_loss(logits, ids)
    loss = loss_lm + cfg.selector_weight * sel_loss
    stats = {"lm_loss": float(loss_lm.detach()), "selector_loss": float(sel_loss.detach()),
             "primary_pure_loss": float(expert_losses.gather(0, idx[:, :1].t()).mean()),
             "best_expert_loss": float(expert_losses.min(0).values.mean()),
             "selector_accuracy": float((scores.detach().argmax(1) == best).float().mean())}
    return loss, stats


def train_mot(mot: MoTModel, blocks: torch.Tensor, cfg: MoTTrainConfig, *, seed: int | None = None) -> dict:
    """``cfg.steps`` AdamW steps on selector + interaction layers; the base and experts stay frozen."""
    from expertmesh.precision import use_bf16 as _use_bf16

    if len(blocks) == 0:
        raise ConfigError("no training blocks for MoT: the data is smaller than one block; lower seq_len")
    opt = torch.optim.AdamW(mot.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    use_bf16 = _use_bf16(cfg.precision)
    history: list[dict] = []
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        ids = blocks[torch.randint(len(blocks), (min(cfg.batch_size, len(blocks)),), generator=gen)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss, stats = mot_step(mot, ids, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(mot.parameters(), 1.0)
        opt.step()
        history.append(stats)
    seconds = time.perf_counter() - t0
    tokens = cfg.steps * min(cfg.batch_size, len(blocks)) * blocks.shape[1]
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {"steps": cfg.steps, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
            "first_lm_loss": first.get("lm_loss", float("nan")), "last_lm_loss": last.get("lm_loss", float("nan")),
            "last_selector_accuracy": last.get("selector_accuracy", float("nan"))}


# -- evaluation ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_mot(mot: MoTModel, blocks: torch.Tensor, *, start: int | None = None, batch_size: int = 8,
                 allowed: torch.Tensor | None = None) -> dict:
    """Held-out loss of MoT on positions > ``start`` (default: the selector's prefix length, so the tokens the
    selector read are not scored) and how often each expert was the primary."""
    start = mot.cfg.select_tokens if start is None else start
    if start >= blocks.shape[1] - 1:
        raise ConfigError(f"blocks of {blocks.shape[1]} tokens leave nothing to score after start={start}")
    total, count, primaries = 0.0, 0, torch.zeros(mot.num_candidates)
    t0 = time.perf_counter()
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size]
        out = mot(ids, allowed=allowed)
        total += float(lm_loss(out.logits, ids, start=start)) * len(ids)
        count += len(ids)
        primaries += torch.bincount(out.experts[:, 0], minlength=mot.num_candidates).float()
    seconds = time.perf_counter() - t0
    return {"loss": total / max(count, 1), "start": start,
            "primary_share": {n: round(float(primaries[j]) / max(count, 1), 4) for j, n in enumerate(mot.candidate_names)},
            "tokens_per_second": round(count * blocks.shape[1] / seconds, 1) if seconds > 0 else 0.0}


@torch.no_grad()
def evaluate_composed_from(composed, blocks: torch.Tensor, *, start: int, batch_size: int = 8,
                           fixed_weights: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> float:
    """The token-level router's loss on the same positions as ``evaluate_mot`` (for a like-for-like number)."""
    was = composed.training
    composed.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size]
            fw = None if fixed_weights is None else fixed_weights.expand(len(ids), -1)
            ok = None if allowed is None else allowed.expand(len(ids), -1)
            total += float(lm_loss(composed(ids, fixed_weights=fw, allowed=ok).logits, ids, start=start)) * len(ids)
            count += len(ids)
    finally:
        composed.train(was)
    return total / max(count, 1)
