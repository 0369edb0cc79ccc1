"""The methods table: a registry of method name -> function(ctx) -> {row name: {"losses": {domain: loss}, ...}}.

A method that raises is recorded as an error with its reason (the others still run), never as a number. Native
methods use only the core library (base, experts, ComposedModel); methods from expertmesh.compose and
router_training live in ``external.py`` and register into the same table when it is imported (the package does).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class MethodInfo:
    name: str
    fn: Callable
    group: str          # reference | expertmesh | baseline | federated | upper-bound
    description: str


METHODS: dict[str, MethodInfo] = {}


def method(name: str, group: str, description: str):
    def deco(fn):
        METHODS[name] = MethodInfo(name, fn, group, description)
        return fn
    return deco


@dataclass
class Context:
    """Everything methods share: the base, the experts, held-out blocks per domain and cached per-token scores."""

    cfg: object
    base: object                                  # expertmesh.base.Base
    base_spec: str | None
    experts: list                                 # ExpertWeights, one per expert domain, in expert_domains order
    expert_domains: list[str]
    eval_domains: list[str]                       # every available domain (expert domains + uncovered)
    blocks: dict[str, torch.Tensor]               # domain -> [n, T]
    corpora: dict[str, Path]
    work: Path
    log: Callable = print
    cache: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)    # analyses the harness reports besides the loss table

    @property
    def uncovered(self) -> list[str]:
        return [d for d in self.eval_domains if d not in self.expert_domains]

    # -- shared computations ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def composed(self, experts=None, **kw):
        from expertmesh.mixture.model import ComposedModel

        cm = ComposedModel(self.base.model, list(self.experts if experts is None else experts), **kw)
        cm.eval()
        try:
            yield cm
        finally:
            cm.close()

    def token_logprobs(self, forward, blocks: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """[n, T-1] log p(next token) under ``forward(ids) -> logits``."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(blocks), batch_size):
                ids = blocks[i:i + batch_size]
                logits = forward(ids).float()
                lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
                out.append(lp)
        return torch.cat(out, 0)

    def base_lp(self, d: str) -> torch.Tensor:
        key = ("base", d)
        if key not in self.cache:
            self.cache[key] = self.token_logprobs(lambda ids: self.base.model(input_ids=ids).logits, self.blocks[d])
        return self.cache[key]

    def expert_lp(self, d: str) -> torch.Tensor:
        """[N, n, T-1]: each expert alone (its own two-way gate with the public base, as its owner trained it)."""
        key = ("experts", d)
        if key not in self.cache:
            n = len(self.experts)
            with self.composed(top_k=2) as cm:
                rows = []
                for j in range(n):
                    allowed = torch.zeros(n, dtype=torch.bool)
                    allowed[j] = True
                    rows.append(self.token_logprobs(lambda ids: cm(ids, allowed=allowed).logits, self.blocks[d]))
            self.cache[key] = torch.stack(rows, 0)
        return self.cache[key]

    def block_texts(self, d: str) -> list[str]:
        return [self.base.tokenizer.decode(b.tolist(), skip_special_tokens=True) for b in self.blocks[d]]

    def retriever_scores(self, d: str) -> torch.Tensor:
        """[n, N] RouterRetriever score: mean cosine between the block's embedding and each expert's pilots."""
        key = ("retr", d)
        if key not in self.cache:
            from expertmesh.embedder import get_embedder

            emb = torch.from_numpy(get_embedder(None).embed(self.block_texts(d)))
            scores = [(emb @ e.pilots.float().t()).mean(-1) for e in self.experts]
            self.cache[key] = torch.stack(scores, -1)
        return self.cache[key]


def loss_of(lp: torch.Tensor) -> float:
    return float(-lp.mean())


def _per_domain(ctx: Context, fn) -> dict[str, float]:
    return {d: fn(d) for d in ctx.eval_domains}


# -- reference ------------------------------------------------------------------------------------------------
@method("base", "reference", "the frozen public base model alone")
def m_base(ctx: Context):
    return {"base": {"losses": _per_domain(ctx, lambda d: loss_of(ctx.base_lp(d)))}}


@method("expert-alone", "reference", "each expert alone (its two-way gate with the public base, as trained)")
def m_experts(ctx: Context):
    rows = {}
    for j, name in enumerate(ctx.expert_domains):
        rows[f"expert:{name}"] = {"losses": _per_domain(ctx, lambda d: loss_of(ctx.expert_lp(d)[j]))}
    return rows


@method("oracle", "reference", "the true domain's own expert; on an uncovered domain the best single expert in "
                                "hindsight")
def m_oracle(ctx: Context):
    def f(d):
        lp = ctx.expert_lp(d)
        if d in ctx.expert_domains:
            return loss_of(lp[ctx.expert_domains.index(d)])
        return min(loss_of(lp[j]) for j in range(len(ctx.experts)))
    return {"oracle": {"losses": _per_domain(ctx, f)}}


# -- expertmesh routing (no training) ------------------------------------------------------------------------
def _domain_router(ctx: Context, k: int):
    losses, mass = {}, {}
    with ctx.composed(top_k=k) as cm:
        for d in ctx.eval_domains:
            masses = []

            def fwd(ids):
                out = cm(ids, trace=True).logits
                masses.append(cm.last_trace.mass.sum(0))
                return out
            losses[d] = loss_of(ctx.token_logprobs(fwd, ctx.blocks[d]))
            mass[d] = (torch.stack(masses).sum(0) / len(ctx.blocks[d])).tolist()
    return {"losses": losses, "gate_mass": {"entries": ["public"] + list(ctx.expert_domains), "by_domain": mass}}


@method("domain-router-k1", "expertmesh", "FlexOlmo-style domain router rows, no training, top-1 entry per token "
                                          "(the public base counts as an entry)")
def m_domain_k1(ctx: Context):
    return {"domain-router-k1": _domain_router(ctx, 1)}


@method("domain-router-k2", "expertmesh", "domain router, top-2 entries per token (public + best expert, or two "
                                          "experts)")
def m_domain_k2(ctx: Context):
    row = _domain_router(ctx, 2)
    ctx.extras["heatmap"] = row["gate_mass"]
    return {"domain-router-k2": row}


@method("retriever-top1", "expertmesh", "RouterRetriever selector: the expert whose pilots are most similar on "
                                        "average, then its token gate with the public base")
def m_retriever(ctx: Context):
    losses, acc = {}, {}
    for d in ctx.eval_domains:
        pick = ctx.retriever_scores(d).argmax(-1)                      # [n]
        lp = ctx.expert_lp(d)[pick, torch.arange(len(pick))]
        losses[d] = loss_of(lp)
        if d in ctx.expert_domains:
            acc[d] = float((pick == ctx.expert_domains.index(d)).float().mean())
        else:
            acc[d] = None
    covered = [v for v in acc.values() if v is not None]
    ctx.extras["routing_accuracy"] = {"by_domain": acc, "mean": sum(covered) / len(covered) if covered else None,
                                      "what": "sequence-level: retriever top-1 expert == true domain, held-out blocks"}
    return {"retriever-top1": {"losses": losses}}


@method("retriever-top2-gate", "expertmesh", "retrieve composition: the top-2 experts by pilot similarity become "
                                             "the candidates, then the token gate (k=2) among them + public")
def m_retriever_gate(ctx: Context):
    losses = {}
    n = len(ctx.experts)
    with ctx.composed(top_k=2) as cm:
        for d in ctx.eval_domains:
            scores = ctx.retriever_scores(d)
            top = scores.topk(min(2, n), -1).indices                     # [blocks, m]
            allowed = torch.zeros(len(top), n, dtype=torch.bool).scatter(1, top, True)
            pos = {"i": 0}

            def fwd(ids):
                a = allowed[pos["i"]:pos["i"] + len(ids)]
                pos["i"] += len(ids)
                return cm(ids, allowed=a).logits
            losses[d] = loss_of(ctx.token_logprobs(fwd, ctx.blocks[d]))
    return {"retriever-top2-gate": {"losses": losses}}


# -- training-free baselines -----------------------------------------------------------------------------
@method("uniform-merge", "baseline", "uniform linear merge of all LoRA deltas (fixed weights 1/N, no gate)")
def m_uniform(ctx: Context):
    n = len(ctx.experts)

    def fwd(ids):
        w = torch.full((ids.shape[0], n + 1), 1.0 / n)
        w[:, 0] = 0.0
        return cm(ids, fixed_weights=w).logits
    with ctx.composed(top_k=2) as cm:
        losses = _per_domain(ctx, lambda d: loss_of(ctx.token_logprobs(fwd, ctx.blocks[d])))
    return {"uniform-merge": {"losses": losses}}


@method("btm-ensemble", "baseline", "BTM output ensemble: p(x) = sum_j P(j|x) p_j(x), P(j|x) = softmax of the "
                                    "retriever score / 0.1 (native implementation)")
def m_btm(ctx: Context):
    from expertmesh.compose.baselines import mix_logprobs

    def f(d):
        w = torch.log_softmax(ctx.retriever_scores(d) / 0.1, -1)       # [n, N]
        lp = ctx.expert_lp(d)                                           # [N, n, T]
        return loss_of(mix_logprobs(lp, w.t()[..., None]))
    return {"btm-ensemble": {"losses": _per_domain(ctx, f)}}


# -- upper bound: pooled data (breaks data locality) --------------------------------------------------------
@method("central-pooled-lora", "upper-bound", "one LoRA trained centrally on the pooled data of all expert domains "
                                              "(same total token budget as all experts together)")
def m_central(ctx: Context):
    from benchmarks.mesh.data import write_pooled
    from benchmarks.mesh.experts import get_expert
    from expertmesh.mixture.lora_io import load_expert

    cfg = ctx.cfg
    pooled = write_pooled({d: ctx.corpora[d] for d in ctx.expert_domains}, ctx.work / "pooled" / "pooled", cfg.seed)
    steps = cfg.central_steps or cfg.steps * len(ctx.experts)
    path, rec = get_expert(cfg, ctx.base, ctx.base_spec, "pooled", pooled, ctx.work / "experts", steps=steps,
                           log=ctx.log)
    ctx.extras.setdefault("experts", {})["pooled"] = rec
    ew = load_expert(path, expected_fingerprint=ctx.base.fingerprint)
    losses = {}
    with ctx.composed([ew], top_k=2) as cm:
        for d in ctx.eval_domains:
            losses[d] = loss_of(ctx.token_logprobs(lambda ids: cm(ids).logits, ctx.blocks[d]))
    return {"central-pooled-lora": {"losses": losses, "train_steps": steps}}

