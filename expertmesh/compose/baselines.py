"""Baselines in the composition API, for honest comparison with the composed model.

- expert alone / oracle:  ``rt.plan(prompts, include=[j])`` -- the expert behind the same two-way gate with the
  public row it was trained with (``oracle_plan`` picks the true domain's expert per request).
- uniform / TIES merge:   one LoRA built with PEFT's ``add_weighted_adapter`` (``merge_experts``), then run as a
  single always-on expert (``MergedModel``), exactly what plain PEFT would compute with the merged adapter.
  Combination types: "cat" is the exact weighted sum of the deltas for any ranks ("linear" needs equal ranks
  and is an approximation); TIES needs a ``density`` and equal ranks ("ties") or an SVD back to one rank
  ("ties_svd", the choice here when ranks differ).
- BTM ensemble:           p(x_t) = sum_j P(j | prompt) p_j(x_t) over the single-expert models, with the domain
  posterior P(j | prompt) = softmax(retriever score / T) (``btm_logprobs``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from expertmesh.errors import ConfigError, UnknownMemberError
from expertmesh.mixture.lora_io import ExpertWeights


# -- expert alone / oracle --------------------------------------------------------------------------------
def oracle_plan(rt, prompts: list[str], domains: list[str], *, expert_for: dict[str, str] | None = None):
    """Plan giving each request the member of its true domain (``expert_for`` maps domain -> member name;
    default: the member with that name, else the member carrying that domain tag)."""
    members = rt.spec.members
    pick = []
    for d in domains:
        name = (expert_for or {}).get(d)
        if name is None:
            name = d if d in rt.member_names else next((m.name for m in members if d in m.domain_tags), None)
        if name is None:
            raise UnknownMemberError(f"no member of {rt.spec.ref} for domain {d!r}")
        pick.append(name)
    import dataclasses

    plans = [rt.plan([p], include=[n], selection="token") for p, n in zip(prompts, pick)]
    return dataclasses.replace(plans[0], allowed=torch.cat([p.allowed for p in plans]),
                               candidates=[p.candidates[0] for p in plans], scores=[p.scores[0] for p in plans],
                               notes=[p.notes[0] for p in plans], fallback=[p.fallback[0] for p in plans])


# -- PEFT merges ------------------------------------------------------------------------------------------
def merge_experts(base_model, expert_dirs: dict[str, str | Path], *, combination_type: str = "cat",
                  weights: list[float] | None = None, density: float | None = None, svd_rank: int | None = None,
                  name: str = "merged") -> ExpertWeights:
    """One LoRA merged from the experts by PEFT's add_weighted_adapter, returned as an ExpertWeights.

    ``base_model`` must be a plain (unwrapped) model; PEFT injects and then removes its layers, leaving it as it
    was. Uniform merge: weights 1/N, "cat". TIES: combination_type "ties"/"ties_svd" with density (e.g. 0.5).
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = list(expert_dirs)
    if not names:
        raise ConfigError("merge_experts needs at least one expert")
    weights = weights if weights is not None else [1.0 / len(names)] * len(names)
    if combination_type.startswith(("ties", "dare")) and density is None:
        raise ConfigError(f"combination_type={combination_type!r} needs density (e.g. 0.5)")
    kw = {"density": density} if density is not None else {}
    if svd_rank is not None:
        kw["svd_rank"] = svd_rank
    pm = PeftModel.from_pretrained(base_model, str(expert_dirs[names[0]]), adapter_name=names[0])
    try:
        for n in names[1:]:
            pm.load_adapter(str(expert_dirs[n]), adapter_name=n)
        pm.add_weighted_adapter(names, weights, name, combination_type=combination_type, **kw)
        lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        prefix = "base_model.model."
        for path, module in pm.named_modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                a = module.lora_A[name].weight.detach().float().clone()
                b = module.lora_B[name].weight.detach().float().clone() * float(module.scaling[name])
                lora[path[len(prefix):] if path.startswith(prefix) else path] = (a, b)
    finally:
        pm.unload()                     # takes the LoRA layers out again; the base weights are untouched
    if not lora:
        raise ConfigError(f"PEFT produced no merged LoRA for {names}")
    L, d = base_model.config.num_hidden_layers, base_model.config.hidden_size
    zeros = torch.zeros(L, d)
    return ExpertWeights(name=name, lora=lora, scaling=1.0, router_rows=zeros, anchor_rows=zeros,
                         pilots=torch.zeros(1, 1))


class MergedModel:
    """A merged LoRA applied in full to every token (weight 1, no gate): plain PEFT semantics."""

    def __init__(self, base_model, merged: ExpertWeights):
        from expertmesh.mixture.model import ComposedModel

        self.model = ComposedModel(base_model, [merged], top_k=1)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        fixed = torch.tensor([[0.0, 1.0]]).expand(input_ids.shape[0], -1)
        with torch.inference_mode():
            return self.model(input_ids, attention_mask, fixed_weights=fixed).logits

    def close(self) -> None:
        self.model.close()


# -- BTM output ensemble ----------------------------------------------------------------------------------
def domain_posterior(rt, prompts: list[str], *, temperature: float | None = None, top_m: int | None = None,
                     embeddings=None) -> torch.Tensor:
    """[B, N] P(member | prompt) = softmax(mean pilot similarity / T) over the allowed members (top-m if set)."""
    import numpy as np

    from expertmesh.compose.selector import top_m as pick_top_m

    if rt._index is None:
        raise ConfigError(f"composition {rt.spec.ref} has no pilots; BTM needs a domain posterior")
    t = temperature or rt.spec.score_temperature
    emb = embeddings if embeddings is not None else rt.embed(list(prompts))
    s = rt._index.scores(emb)
    out = torch.zeros(len(prompts), len(rt.member_names))
    ok = np.array([n not in rt.withdrawn for n in rt.member_names])
    for b in range(len(prompts)):
        chosen = pick_top_m(s[b], ok, top_m)
        if chosen:
            z = torch.tensor([float(s[b, j]) for j in chosen]) / t
            out[b, chosen] = torch.softmax(z, 0)
    return out


def mix_logprobs(logps: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """BTM's mixture in log space, log sum_j w_j p_j(x): ``logps`` [N, ...] holds expert j's log-probabilities in
    row j, ``log_weights`` log w_j broadcastable to it (e.g. [N, B, 1] per request). The one formula the
    benchmarks score; ``btm_logprobs`` computes the same sum one expert at a time, so it never holds N [B, T, V]."""
    return torch.logsumexp(logps + log_weights, 0)


def btm_logprobs(rt, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, posterior: torch.Tensor,
                 *, min_weight: float = 1e-4) -> torch.Tensor:
    """[B, T, V] log of sum_j P(j) p_j(x_t), p_j the single-expert model (include=[j]); experts with weight
    below ``min_weight`` for every request are skipped (they change the mixture by less than that)."""
    B = input_ids.shape[0]
    out = None
    prompts = [""] * B
    for j, name in enumerate(rt.member_names):
        w = posterior[:, j]
        if float(w.max()) < min_weight:
            continue
        plan = rt.plan(prompts, include=[name], selection="token")
        logp = torch.log_softmax(rt.logits(input_ids, attention_mask, plan).float(), -1)
        term = logp + torch.log(w.clamp_min(1e-30))[:, None, None]
        out = term if out is None else torch.logaddexp(out, term)
    if out is None:
        raise ConfigError("the posterior gives no expert any weight")
    # renormalise over the experts actually used (their weights may not sum to exactly 1 after skipping)
    kept = posterior[:, [j for j in range(posterior.shape[1]) if float(posterior[:, j].max()) >= min_weight]]
    return out - torch.log(kept.sum(1).clamp_min(1e-30))[:, None, None]
