"""DP-SGD for owner-side expert training: per-sample clipping + Gaussian noise on the trainable parameters only
(the LoRA factors and the owner's router row; the base is frozen and public), accounted with Opacus' RDP
accountant.

Why not Opacus' GradSampleModule: the expert trains inside ComposedModel, whose MixtureLinear layers hold the
LoRA factors of a gated mixture; Opacus has no grad sampler for that layer. Per-sample gradients are computed
exactly instead, from one batched backward per chunk of the batch: ComposedModel.per_sample gives every sample its
own copy of the trainable tensors, so each copy's gradient is that sample's alone. Each is clipped to ``clip`` in
L2 over all trainable tensors, summed, noised with N(0, (sigma*clip)^2) and divided by the expected batch size
q*N (Opacus' convention, so the lr means the same as without DP).

Batches are Poisson-sampled (each block independently with rate q = batch_size / N), which is what the RDP
accountant's subsampled-Gaussian bound assumes. sigma is the smallest noise multiplier that reaches
(epsilon, delta) after ``steps`` steps at rate q (opacus.accountants.utils.get_noise_multiplier).

What DP covers and what it does not: the adapter and the router row. Under DP the router row starts from the
public anchor row instead of the mean hidden state of the owner's data (a non-private statistic). The pilot
embeddings in the signature are computed from the training passages outside DP-SGD; the manifest says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from expertmesh.errors import ConfigError
from expertmesh.expert.blocks import micro_batches


@dataclass(frozen=True)
class DPPlan:
    epsilon: float
    delta: float
    clip: float
    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_manifest(self, accounted_epsilon: float) -> dict:
        return {"mechanism": "DP-SGD (per-sample clipping, Poisson sampling, Gaussian noise)",
                "accountant": "opacus-rdp", "target_epsilon": self.epsilon, "epsilon": round(accounted_epsilon, 4),
                "delta": self.delta, "clipping_norm": self.clip, "noise_multiplier": round(self.noise_multiplier, 5),
                "sample_rate": round(self.sample_rate, 6), "steps": self.steps,
                "covers": ["lora", "router_row"], "not_covered": ["pilots"]}


def plan_dp(epsilon: float, delta: float, clip: float, *, batch_size: int, num_blocks: int, steps: int) -> DPPlan:
    from opacus.accountants.utils import get_noise_multiplier

    if delta >= 1.0 / num_blocks:
        raise ConfigError(f"dp_delta={delta} must be < 1/N = {1.0 / num_blocks:.2e} for N={num_blocks} training "
                          "blocks (a larger delta allows releasing a whole block); lower --dp-delta")
    q = min(1.0, batch_size / num_blocks)
    with warnings.catch_warnings():          # "optimal order is the largest alpha": a looser, still valid bound
        warnings.simplefilter("ignore", UserWarning)
        sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=max(steps, 1),
                                     accountant="rdp")
    return DPPlan(epsilon, delta, clip, float(sigma), q, steps)


def accounted_epsilon(plan: DPPlan, steps_done: int) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    if steps_done:
        acc.history = [(plan.noise_multiplier, plan.sample_rate, steps_done)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(plan.delta)) if steps_done else 0.0


def poisson_batch(num_blocks: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    return torch.nonzero(torch.rand(num_blocks, generator=gen) < rate)[:, 0]


def dp_step(loss_of, ids: torch.Tensor, params: list[torch.nn.Parameter], plan: DPPlan, num_blocks: int,
            gen: torch.Generator, *, per_sample) -> float:
    """Set ``p.grad`` of every param to the noised mean of clipped per-sample gradients; return the mean loss.

    ``per_sample(params, n)`` is a context manager that makes the model read n per-sample copies of ``params``
    (yielded as [n, *shape] leaves); ``loss_of(x)`` is then the mean of x's per-sample losses. Micro-batches
    (blocks.micro_batches) bound the activation memory. An empty Poisson batch still adds noise (one step)."""
    total = [torch.zeros_like(p) for p in params]
    loss_sum = 0.0
    for x in micro_batches(ids):
        with per_sample(params, len(x)) as copies:
            loss = loss_of(x).float()
            (loss * len(x)).backward()            # the sum of per-sample losses: copy s gets sample s's gradient
        grads = [torch.zeros_like(c) if c.grad is None else c.grad for c in copies]
        norms = torch.sqrt(sum(g.float().flatten(1).pow(2).sum(1) for g in grads))          # [n]
        scale = (plan.clip / (norms + 1e-6)).clamp(max=1.0)
        for t, g in zip(total, grads):
            t.add_(torch.tensordot(scale.to(g.dtype), g, dims=1))
        loss_sum += float(loss.detach()) * len(x)
    expected = plan.sample_rate * num_blocks
    for p, t in zip(params, total):
        noise = torch.normal(0.0, plan.noise_multiplier * plan.clip, size=p.shape, generator=gen)
        p.grad = (t + noise) / expected
    return loss_sum / len(ids) if len(ids) else float("nan")
