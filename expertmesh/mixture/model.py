"""ComposedModel: one frozen base, N experts, a router per decoder layer, exact per-request masks.

It wraps the base in place: each adapted Linear becomes a MixtureLinear, and a forward pre-hook on each
decoder layer computes that layer's gate from the layer input. Owner-side training uses the same class with
N=1 and trainable factors and router row, so training and composition share one formula (see gate.py).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from expertmesh.errors import ConfigError, UnknownMemberError
from expertmesh.mixture.gate import gate_weights
from expertmesh.mixture.layers import MixtureLinear
from expertmesh.mixture.lora_io import ExpertWeights

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def adaptable_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear modules inside decoder layers, by full path (what LoRA target_modules may name)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and _LAYER_RE.search(name)}


def resolve_targets(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Module paths matched by PEFT-style suffix names ("q_proj", "mlp.down_proj"); unknown names are errors."""
    paths = list(adaptable_modules(model))
    out: list[str] = []
    for t in target_modules:
        hits = [p for p in paths if p == t or p.endswith("." + t)]
        if not hits:
            names = sorted({p.rsplit(".", 1)[-1] for p in paths})
            raise ConfigError(f"target module {t!r} matches no linear layer of the base; choose from {names}")
        out.extend(h for h in hits if h not in out)
    return out


@dataclass
class RoutingTrace:
    """Gate mass per request: mean over layers and tokens of each entry's weight (entry 0 = public base)."""

    entries: list[str]
    mass: torch.Tensor                 # [B, E]
    per_layer: torch.Tensor            # [L, B, E]
    tokens: torch.Tensor               # [B] tokens routed per layer
    notes: list[list[str]] = field(default_factory=list)

    def row(self, b: int) -> dict[str, float]:
        return {name: round(float(self.mass[b, e]), 6) for e, name in enumerate(self.entries)}


class RouterState:
    """Router parameters plus the per-forward routing context the layers read."""

    def __init__(self, anchor_rows: torch.Tensor, expert_rows: torch.Tensor, *, top_k: int,
                 temperature: float = 1.0, bias: torch.Tensor | None = None):
        self.anchor_rows = anchor_rows       # [L, d], the public entry, frozen
        self.expert_rows = expert_rows       # [L, N, d], may be an nn.Parameter when tuning ([L, B, N, d]
                                             # inside ComposedModel.per_sample)
        self.bias = bias                     # [E] or None, may be an nn.Parameter
        self.top_k = top_k
        self.temperature = temperature
        self.allowed: torch.Tensor | None = None        # [B, E] bool
        self.fixed: torch.Tensor | None = None          # [B, E] sequence-level weights (bypass token gate)
        self.token_mask: torch.Tensor | None = None     # [B, T] for the trace
        self.tracing = False
        self._weights: dict[int, torch.Tensor | None] = {}
        self._cols: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._trace_sum: torch.Tensor | None = None
        self._trace_tokens: torch.Tensor | None = None

    def compute(self, layer: int, h: torch.Tensor) -> None:
        if self.expert_rows.shape[-2] == 0:
            self._weights[layer] = None
            return
        if self.fixed is not None:
            w = self.fixed[:, None, :].expand(h.shape[0], h.shape[1], -1).float()
        else:
            w = self._token_gate(layer, h)
        self._weights[layer] = None if (self.fixed is None and self.allowed is not None
                                        and not bool(self.allowed[:, 1:].any())) else w[..., 1:]
        if self.tracing:
            self._record(layer, w.detach())

    def _token_gate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Gate weights [B, T, E]. With a mask, the logits are computed only for the columns some row of the
        batch may use (the retriever's top-m candidates, opt-outs removed): a masked column would get -inf and
        weight 0 anyway, and the kept columns stay in entry order, so the stable top-k breaks ties as over all
        E columns. The gate's cost then follows the candidates, not the number of members."""
        er = self.expert_rows[layer]                                     # [N, d], or [B, N, d] per sample
        anchor = self.anchor_rows[layer].to(er.dtype).expand(*er.shape[:-2], 1, er.shape[-1])
        rows = torch.cat([anchor, er], -2)
        cols = self._columns()
        if cols is None:
            return gate_weights(h, rows, top_k=self.top_k, temperature=self.temperature, bias=self.bias,
                                allowed=self.allowed)
        wc = gate_weights(h, rows.index_select(-2, cols), top_k=self.top_k, temperature=self.temperature,
                          bias=self.bias[cols] if self.bias is not None else None, allowed=self.allowed[:, cols])
        return wc.new_zeros(*wc.shape[:-1], rows.shape[-2]).index_copy(-1, cols, wc)

    def _columns(self) -> torch.Tensor | None:
        """Entry indices any row may use (None: all of them), computed once per mask."""
        if self.allowed is None:
            return None
        if self._cols is None or self._cols[0] is not self.allowed:
            used = self.allowed.any(0)
            self._cols = (self.allowed, None if bool(used.all()) else used.nonzero().squeeze(1))
        return self._cols[1]

    def expert_weights(self, layer: int) -> torch.Tensor | None:
        return self._weights.get(layer)

    def _record(self, layer: int, w: torch.Tensor) -> None:
        B, T, E = w.shape
        mask = self.token_mask if self.token_mask is not None and tuple(self.token_mask.shape) == (B, T) \
            else torch.ones(B, T)
        mask = mask.to(w.dtype)
        if self._trace_sum is None:
            self._trace_sum = torch.zeros(self.anchor_rows.shape[0], B, E, dtype=torch.float64)
            self._trace_tokens = torch.zeros(self.anchor_rows.shape[0], B, dtype=torch.float64)
        self._trace_sum[layer] += (w * mask[..., None]).sum(1).double()
        self._trace_tokens[layer] += mask.sum(1).double()

    def take_trace(self, entries: list[str]) -> RoutingTrace | None:
        if self._trace_sum is None:
            return None
        per_layer = self._trace_sum / self._trace_tokens.clamp_min(1)[..., None]
        trace = RoutingTrace(entries=entries, mass=per_layer.mean(0).float(), per_layer=per_layer.float(),
                             tokens=self._trace_tokens[0].clone())
        self._trace_sum = self._trace_tokens = None
        return trace


class ComposedModel(nn.Module):
    """Base + experts + router. ``allowed`` masks are over experts [B, N]; the public base is always allowed."""

    def __init__(self, base_model: nn.Module, experts: list[ExpertWeights], *, top_k: int = 2,
                 temperature: float = 1.0, anchor_rows: torch.Tensor | None = None,
                 expert_rows: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be >= 1")
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ConfigError(f"expert names in one composition must be unique, got {names}")
        self.base_model = base_model
        self.experts = list(experts)
        L, d = base_model.config.num_hidden_layers, base_model.config.hidden_size
        for e in experts:
            if tuple(e.router_rows.shape) != (L, d):
                raise ConfigError(f"expert {e.name} has router rows {tuple(e.router_rows.shape)}, base needs {(L, d)}")
        if anchor_rows is None:
            anchor_rows = (torch.stack([e.anchor_rows for e in experts]).mean(0) if experts else torch.zeros(L, d))
        if expert_rows is None:
            expert_rows = torch.stack([e.router_rows for e in experts], 1) if experts else torch.zeros(L, 0, d)
        self.router = RouterState(anchor_rows.float(), expert_rows, top_k=top_k, temperature=temperature, bias=bias)
        self._wrapped: dict[str, MixtureLinear] = {}
        self._hooks = []
        self._install(dropout)
        self.last_trace: RoutingTrace | None = None

    # -- set-up ---------------------------------------------------------------------------------------
    def _install(self, dropout: float) -> None:
        linears = adaptable_modules(self.base_model)
        # A lazily loaded expert (weights=False: empty ``lora``) adapts the modules its manifest names.
        paths = sorted({p for e in self.experts for p in (
            e.lora or (resolve_targets(self.base_model, e.manifest.lora.target_modules) if e.manifest else []))})
        unknown = [p for p in paths if p not in linears]
        if unknown:
            raise ConfigError(f"experts adapt modules the base does not have: {unknown[:3]}")
        for path in paths:
            layer = int(_LAYER_RE.search(path).group(1))
            parent_path, attr = path.rsplit(".", 1)
            parent = self.base_model.get_submodule(parent_path)
            mix = MixtureLinear(linears[path], layer, self.router)
            mix.set_factors([(e.lora[path][0], e.lora[path][1], e.scaling) if path in e.lora else None
                             for e in self.experts], dropout=dropout)
            setattr(parent, attr, mix)
            self._wrapped[path] = mix
        for i, layer in enumerate(decoder_layers(self.base_model)):
            self._hooks.append(layer.register_forward_pre_hook(self._make_hook(i), with_kwargs=True))

    def _make_hook(self, layer_idx: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.router.compute(layer_idx, h)
        return hook

    def close(self) -> None:
        """Give the base model back unwrapped (so another composition or a plain baseline can use it)."""
        for h in self._hooks:
            h.remove()
        for path, mix in self._wrapped.items():
            parent_path, attr = path.rsplit(".", 1)
            setattr(self.base_model.get_submodule(parent_path), attr, mix.base)
        self._hooks, self._wrapped = [], {}

    @contextlib.contextmanager
    def per_sample(self, params: list[torch.Tensor], samples: int) -> Iterator[list[torch.Tensor]]:
        """Per-sample gradients from one batched backward (DP-SGD): inside the block each of ``params`` (LoRA
        factors held by this model, or its expert-row tensor) is replaced by a leaf of ``samples`` copies,
        yielded as [samples, *shape] in the order of ``params``. Sample s of the batch reads only copy s, so
        after a backward of the summed per-sample losses copy.grad[s] is sample s's own gradient."""
        copies = [p.detach().unsqueeze(0).expand(samples, *p.shape).clone().requires_grad_() for p in params]
        by_id = {id(p): c for p, c in zip(params, copies)}
        saved = {path: mix.factors for path, mix in self._wrapped.items()}
        saved_rows = self.router.expert_rows
        try:
            for path, mix in self._wrapped.items():
                mix.set_factors([None if f is None else (by_id.get(id(f[0]), f[0]), by_id.get(id(f[1]), f[1]), f[2])
                                 for f in saved[path]], dropout=mix.dropout)
            if id(saved_rows) in by_id:          # rows [L, N, d] -> [L, S, N, d]: the layer index stays first
                self.router.expert_rows = by_id[id(saved_rows)].movedim(0, 1)
            yield copies
        finally:
            for path, mix in self._wrapped.items():
                mix.set_factors(saved[path], dropout=mix.dropout)
            self.router.expert_rows = saved_rows

    # -- routing context --------------------------------------------------------------------------------
    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    @property
    def entries(self) -> list[str]:
        return ["public"] + self.expert_names

    def mask_for(self, include: list[str] | None = None, exclude: list[str] | None = None) -> torch.Tensor:
        """[N] bool over experts from include/exclude name lists; unknown names are errors."""
        known = set(self.expert_names)
        for name in (include or []) + (exclude or []):
            if name not in known:
                raise UnknownMemberError(f"unknown expert {name!r}; this composition has {sorted(known)}")
        inc = set(include) if include is not None else known
        return torch.tensor([n in inc and n not in set(exclude or []) for n in self.expert_names], dtype=torch.bool)

    @contextlib.contextmanager
    def routing(self, batch: int, *, allowed: torch.Tensor | None = None, fixed_weights: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, trace: bool = False) -> Iterator[None]:
        r = self.router
        if allowed is not None:
            allowed = allowed.to(torch.bool)
            if allowed.dim() == 1:
                allowed = allowed[None].expand(batch, -1)
            allowed = torch.cat([torch.ones(batch, 1, dtype=torch.bool), allowed], 1)
        r.allowed, r.fixed, r.token_mask, r.tracing = allowed, fixed_weights, attention_mask, trace
        try:
            yield
        finally:
            if trace:
                self.last_trace = r.take_trace(self.entries)
            r.allowed = r.fixed = r.token_mask = None
            r.tracing = False
            r._weights = {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, allowed: torch.Tensor | None = None,
                fixed_weights: torch.Tensor | None = None, trace: bool = False, logits_to_keep: int = 0):
        """``logits_to_keep`` k > 0: logits of the last k positions only (the output layer is vocabulary-wide)."""
        extra = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        with self.routing(input_ids.shape[0], allowed=allowed, fixed_weights=fixed_weights,
                          attention_mask=attention_mask, trace=trace):
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 allowed: torch.Tensor | None = None, fixed_weights: torch.Tensor | None = None,
                 trace: bool = False, **generate_kwargs) -> torch.Tensor:
        with self.routing(input_ids.shape[0], allowed=allowed, fixed_weights=fixed_weights, trace=trace):
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
