"""Mixture-of-Thoughts (MoT) over a composition's LoRA experts: a selector and cross-expert interaction layers.

Per request the selector reads the prompt (mean input embedding of its first ``select_tokens`` tokens), scores
the allowed candidates (the members and, with ``include_public``, the public base itself, which is the gate's
always-present entry 0), keeps the top K and makes the best one the *primary*. The K experts run side by side as
K copies of the batch through the one frozen base (copy c is candidate c's stream, see ``streams`` below).
After a few evenly spaced decoder layers an interaction layer projects every
active copy's hidden state into a shared latent space (an expert-specific projection d -> latent), and the
primary cross-attends, causally, to the latents of all active copies (itself included) at positions <= its own;
the attention output is projected back (latent -> d, zero-initialised) and added to the primary's residual
stream. Peers are never modified; the answer is the primary's next-token distribution. Experts and base stay
frozen: only the selector and interaction layers train.

What a stream is (``streams``): with "gated" (default) a stream is its expert as its owner trained it, behind
the composition's two-way token gate {public, expert} (the public candidate's stream is the base alone), so an
untrained MoT is exactly the selector's top expert behind its gate and training adds the peers' thoughts on
top. With "lora" a stream is the expert's LoRA alone (gate fixed at 1), as in the paper, where every stream is a
whole expert model; the experts were not trained to run ungated, and it measured worse here (BENCHMARKS.md).

Cost: K forward passes per token (K=2: ~2x a single gated mixture), plus the interaction layers (~0.5M params
for SmolLM2 with 3 experts, latent 64, 3 depths). Opt-out: an excluded expert gets score -inf, is never selected
and never runs, so excluding j gives what a MoT that never had j would give for the same learned parameters.

    mot = MoTModel(composed, MoTConfig(top_k=2))
    out = mot(ids)                  # out.logits [B, T, V] of the primary; out.primary, out.peers per request
    text_ids = mot.generate(ids, max_new_tokens=20)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from expertmesh.errors import ConfigError
from expertmesh.mixture.gate import normalise_hidden
from expertmesh.mixture.model import decoder_layers
from expertmesh.validate import check_choice, check_int, from_known_fields

STREAM_KINDS = ("lora", "gated")    # index = the code stored in a composition's mot.arch tensor


@dataclass
class MoTConfig:
    """The MoT architecture (saved beside its weights)."""

    top_k: int = 2                 # active experts per request (primary + top_k-1 peers)
    num_interaction: int = 3       # interaction layers, after evenly spaced decoder layers
    latent_dim: int = 64
    num_heads: int = 4
    select_tokens: int = 32        # prompt tokens the selector reads
    selector_hidden: int = 128
    include_public: bool = True    # the public base (no LoRA) is a candidate too, like the gate's public entry
    # "gated": a stream is its expert behind the two-way gate {public, expert} it was trained with;
    # "lora": a stream is its expert's LoRA alone (the paper's form).
    streams: str = "gated"

    def __post_init__(self) -> None:
        check_int("top_k", self.top_k, lo=1, hi=64)
        check_int("num_interaction", self.num_interaction, lo=1, hi=64)
        check_int("latent_dim", self.latent_dim, lo=4, hi=8192)
        check_int("num_heads", self.num_heads, lo=1, hi=64)
        if self.latent_dim % self.num_heads:
            raise ConfigError(f"latent_dim={self.latent_dim} must be a multiple of num_heads={self.num_heads}")
        check_int("select_tokens", self.select_tokens, lo=1)
        check_int("selector_hidden", self.selector_hidden, lo=1)
        if not isinstance(self.include_public, bool):
            raise ConfigError(f"include_public={self.include_public!r} must be true or false")
        check_choice("streams", self.streams, list(STREAM_KINDS))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MoTConfig":
        return from_known_fields(cls, d)


def interaction_depths(num_layers: int, count: int) -> list[int]:
    """Decoder layers after which an interaction layer runs: evenly spaced, e.g. 30 layers, 3 -> [7, 14, 21]."""
    if count >= num_layers:
        return list(range(num_layers))
    return sorted({max(0, round((i + 1) * num_layers / (count + 1)) - 1) for i in range(count)})


class Selector(nn.Module):
    """Scores experts from a pooled prompt embedding: cosine to per-expert keys (initialised from the experts'
    layer-0 router rows, i.e. their mean input embedding), refined by a residual MLP (zero-initialised)."""

    def __init__(self, hidden_size: int, keys: torch.Tensor, hidden: int):
        super().__init__()
        self.inp = nn.Linear(hidden_size, hidden)
        self.out = nn.Linear(hidden, hidden_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.keys = nn.Parameter(normalise_hidden(keys.float()).clone())
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.zeros(keys.shape[0]))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        u = normalise_hidden(pooled)
        u = u + self.out(F.gelu(self.inp(u)))
        cos = F.normalize(u, dim=-1) @ F.normalize(self.keys, dim=-1).t()
        return cos * self.log_scale.exp() + self.bias


class Interaction(nn.Module):
    """Shared-latent cross-attention from the primary to all active copies at one depth."""

    def __init__(self, hidden_size: int, num_experts: int, latent: int, heads: int):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(num_experts, hidden_size, latent) / math.sqrt(hidden_size))
        self.q = nn.Linear(latent, latent, bias=False)
        self.k = nn.Linear(latent, latent, bias=False)
        self.v = nn.Linear(latent, latent, bias=False)
        self.o = nn.Linear(latent, hidden_size, bias=False)
        nn.init.zeros_(self.o.weight)
        self.heads = heads

    def latents(self, h: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """h [C, B, T, d], experts [C, B] -> [C, B, T, latent] (each copy through its own expert's projection)."""
        return torch.einsum("cbtd,cbdl->cbtl", normalise_hidden(h), self.proj[experts])

    def attend(self, z_query: torch.Tensor, z_keys: torch.Tensor, value_scale: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """z_query [B, T, l]; z_keys [C, B, Tk, l]; value_scale [C, B]; mask [B, T, C*Tk] bool -> [B, T, d]."""
        C, B, Tk, L = z_keys.shape
        H, T = self.heads, z_query.shape[1]
        q = self.q(z_query).view(B, T, H, L // H).transpose(1, 2)                         # [B, H, T, l/H]
        k = self.k(z_keys).permute(1, 0, 2, 3).reshape(B, C * Tk, H, L // H).transpose(1, 2)
        v = (self.v(z_keys) * value_scale[..., None, None]).permute(1, 0, 2, 3)
        v = v.reshape(B, C * Tk, H, L // H).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])           # [B, H, T, l/H]
        return self.o(att.transpose(1, 2).reshape(B, T, L))


@dataclass
class MoTOutput:
    logits: torch.Tensor                   # [B, T, V], the primary's
    loss: torch.Tensor | None
    experts: torch.Tensor                  # [B, K] candidate indices (N = public), column 0 = primary
    weights: torch.Tensor                  # [B, K] selector weights over the active experts
    scores: torch.Tensor                   # [B, C] selector scores over candidates (-inf = not allowed)


class _Ctx:
    """What the interaction hooks need during one forward."""

    def __init__(self, mode: str, experts: torch.Tensor, value_scale: torch.Tensor, valid: torch.Tensor,
                 past: int = 0, captured: dict | None = None, cache: dict | None = None):
        self.mode = mode                   # "stacked" (copies in the batch) | "primary" (peers captured) | "capture"
        self.experts = experts             # [C, B]
        self.value_scale = value_scale     # [C, B]
        self.valid = valid                 # [B, past + T] key validity (attention mask)
        self.past = past
        self.captured = captured           # depth -> [N, B, T, d] (capture mode fills it)
        self.cache = cache                 # depth -> [C, B, past, l] latents (generation)


class MoTModel(nn.Module):
    """Selector + interaction layers on top of a ComposedModel that holds all the composition's experts."""

    def __init__(self, composed, cfg: MoTConfig | None = None):
        super().__init__()
        cfg = cfg or MoTConfig()
        # Kept out of the module tree (object.__setattr__): the base and experts are frozen and are not MoT weights.
        object.__setattr__(self, "composed", composed)
        self.cfg = cfg
        base = composed.base_model
        n, d, L = len(composed.experts), base.config.hidden_size, base.config.num_hidden_layers
        if n == 0:
            raise ConfigError("a MoT composition needs at least one expert")
        # Candidates: the N members, then (include_public) the public base as candidate N.
        self.num_experts, self.hidden_size = n, d
        self.num_candidates = n + int(cfg.include_public)
        self.depths = interaction_depths(L, cfg.num_interaction)
        keys = composed.router.expert_rows.detach()[0].float()                          # layer-0 rows [N, d]
        if cfg.include_public:
            keys = torch.cat([keys, composed.router.anchor_rows.detach()[0:1].float()], 0)
        self.selector = Selector(d, keys, cfg.selector_hidden)
        self.interactions = nn.ModuleList(Interaction(d, self.num_candidates, cfg.latent_dim, cfg.num_heads)
                                          for _ in self.depths)
        self._ctx: _Ctx | None = None
        layers = decoder_layers(base)
        self._hooks = [layers[l].register_forward_hook(self._make_hook(i)) for i, l in enumerate(self.depths)]

    @property
    def expert_names(self) -> list[str]:
        return self.composed.expert_names

    @property
    def candidate_names(self) -> list[str]:
        return self.expert_names + (["public"] if self.cfg.include_public else [])

    def gate_columns(self, idx: torch.Tensor) -> torch.Tensor:
        """Candidate index -> column of the composed model's gate ([public, members]): member j -> j+1, public -> 0."""
        return torch.where(idx < self.num_experts, idx + 1, torch.zeros_like(idx))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- selection --------------------------------------------------------------------------------------
    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               allowed: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C] selector scores (C candidates) from the first ``select_tokens`` valid prompt tokens; -inf where
        not allowed. ``allowed`` [B, N] covers the members; the public candidate is always allowed."""
        emb = self.composed.base_model.get_input_embeddings()(input_ids).float()
        mask = torch.ones(input_ids.shape, dtype=torch.float32) if attention_mask is None else attention_mask.float()
        first = (mask.cumsum(1) <= self.cfg.select_tokens).float() * mask
        pooled = (emb * first[..., None]).sum(1) / first.sum(1, keepdim=True).clamp_min(1.0)
        s = self.selector(pooled)
        if allowed is not None:
            allowed = allowed.to(torch.bool)
            if allowed.dim() == 1:
                allowed = allowed[None].expand(s.shape[0], -1)
            if self.cfg.include_public:
                allowed = torch.cat([allowed, torch.ones(allowed.shape[0], 1, dtype=torch.bool)], 1)
            s = s.masked_fill(~allowed, float("-inf"))
        return s

    def select(self, scores: torch.Tensor, primary: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K experts by score (column 0 = primary, forced to ``primary`` where given) and their weights."""
        n_ok = int(torch.isfinite(scores).sum(1).min())
        if n_ok == 0:
            raise ConfigError("no expert is allowed for this request; MoT needs at least one")
        k = min(self.cfg.top_k, n_ok)
        if primary is None:
            idx = scores.topk(k, dim=1).indices
        else:
            rest = scores.scatter(1, primary[:, None], float("-inf"))
            idx = torch.cat([primary[:, None], rest.topk(k - 1, dim=1).indices], 1) if k > 1 else primary[:, None]
        weights = torch.softmax(scores.gather(1, idx), dim=1)
        return idx, weights

    # -- hooks ------------------------------------------------------------------------------------------
    def _make_hook(self, i: int):
        def hook(module, args, output):
            ctx = self._ctx
            if ctx is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            if ctx.mode == "capture":
                C, B = ctx.experts.shape
                ctx.captured[i] = h.detach().view(C, B, *h.shape[1:])
                return None
            h = self._interact(i, h, ctx)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def _interact(self, i: int, h: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        C, B = ctx.experts.shape
        layer = self.interactions[i]
        if ctx.mode == "stacked":
            copies = h.view(C, B, *h.shape[1:])
        else:   # primary only in the batch; the peers' pure hidden states were captured beforehand
            cap = ctx.captured[i]
            peers = cap[ctx.experts[1:], torch.arange(B)[None].expand(C - 1, -1)] if C > 1 else cap[:0, :B]
            copies = torch.cat([h[None], peers.to(h.dtype)], 0)
        z = layer.latents(copies.float(), ctx.experts)                                      # [C, B, T, l]
        if ctx.cache is not None:
            if i in ctx.cache:
                z_keys = torch.cat([ctx.cache[i], z], 2)
            else:
                z_keys = z
            ctx.cache[i] = z_keys.detach()
        else:
            z_keys = z
        T, Tk = z.shape[2], z_keys.shape[2]
        q_pos = ctx.past + torch.arange(T)
        k_pos = torch.arange(Tk)
        causal = (k_pos[None, :] <= q_pos[:, None])                                           # [T, Tk]
        ok = causal[None] & ctx.valid[:, None, :Tk].to(torch.bool)                            # [B, T, Tk]
        self_key = torch.zeros(T, Tk, dtype=torch.bool)
        self_key[torch.arange(T), q_pos.clamp_max(Tk - 1)] = True                             # never an empty row
        first = ok | self_key[None]
        mask = torch.cat([first] + [ok] * (C - 1), 2)                                         # [B, T, C*Tk]
        delta = layer.attend(z[0], z_keys, ctx.value_scale * C, mask)
        primary = copies[0] + delta.to(copies.dtype)
        if ctx.mode == "stacked":
            return torch.cat([primary[None], copies[1:]], 0).view_as(h)
        return primary

    # -- forward and generation -------------------------------------------------------------------------
    def _one_hot(self, experts: torch.Tensor) -> torch.Tensor:
        """[C, B] candidate indices -> [C*B, N+1] sequence-level gate weights (one-hot; public -> entry 0)."""
        flat = experts.reshape(-1)
        fixed = torch.zeros(flat.shape[0], self.num_experts + 1)
        fixed[torch.arange(flat.shape[0]), self.gate_columns(flat)] = 1.0
        return fixed

    def run_decoder(self, ids: torch.Tensor, experts: torch.Tensor, ctx: _Ctx | None, *,
                    attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                    cache=None, use_cache: bool = False):
        """Run the base's decoder on ``ids`` (copy-major [C*B, T]), copy c as candidate experts[c]'s stream."""
        base = self.composed.base_model
        if self.cfg.streams == "gated":
            routing = {"allowed": self._gate_masks(experts)}
        else:
            routing = {"fixed_weights": self._one_hot(experts)}
        self._ctx = ctx
        try:
            with self.composed.routing(ids.shape[0], attention_mask=attention_mask, **routing):
                return base.get_decoder()(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                                          cache=cache, use_cache=use_cache)
        finally:
            self._ctx = None

    def _gate_masks(self, experts: torch.Tensor) -> torch.Tensor:
        """[C, B] candidates -> [C*B, N] gate masks: copy c may use member experts[c] only, beside the gate's
        public entry (the public candidate: no member, so the base alone)."""
        allowed = torch.zeros(experts.numel(), self.num_experts + 1, dtype=torch.bool)     # column N = public
        allowed[torch.arange(experts.numel()), experts.reshape(-1)] = True
        return allowed[:, :self.num_experts]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, allowed: torch.Tensor | None = None,
                primary: torch.Tensor | None = None) -> MoTOutput:
        """Select, run the K active experts as K stacked copies with interaction, return the primary's logits."""
        B, T = input_ids.shape
        scores = self.scores(input_ids, attention_mask, allowed)
        idx, w = self.select(scores, primary)
        K = idx.shape[1]
        experts = idx.t().contiguous()                                                      # [K, B]
        valid = attention_mask if attention_mask is not None else torch.ones(B, T, dtype=torch.long)
        rep_mask = attention_mask.repeat(K, 1) if attention_mask is not None else None
        pos = (valid.cumsum(1) - 1).clamp_min(0).repeat(K, 1) if attention_mask is not None else None
        out = self.run_decoder(input_ids.repeat(K, 1), experts, _Ctx("stacked", experts, w.t(), valid),
                               attention_mask=rep_mask, position_ids=pos)
        logits = self.composed.base_model.get_output_embeddings()(out.last_hidden_state[:B])
        loss = lm_loss(logits, labels) if labels is not None else None
        return MoTOutput(logits=logits, loss=loss, experts=idx, weights=w, scores=scores)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 allowed: torch.Tensor | None = None, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_p: float = 1.0, eos_token_id: int | None = None, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, MoTOutput]:
        """Greedy (temperature 0) or sampled decoding with the KV cache; left-padded batches are fine.

        Returns (ids [B, T + new], selection); the selection's logits are those of the last step.
        """
        B, T = input_ids.shape
        mask = attention_mask.long() if attention_mask is not None else torch.ones(B, T, dtype=torch.long)
        scores = self.scores(input_ids, mask, allowed)
        idx, w = self.select(scores)
        K = idx.shape[1]
        experts = idx.t().contiguous()
        latent_cache: dict = {}
        past_kv, past = None, 0
        cur, pos = input_ids, (mask.cumsum(1) - 1).clamp_min(0)
        out_ids = input_ids
        done = torch.zeros(B, dtype=torch.bool)
        logits = None
        for _ in range(max_new_tokens):
            ctx = _Ctx("stacked", experts, w.t(), mask, past=past, cache=latent_cache)
            out = self.run_decoder(cur.repeat(K, 1), experts, ctx, attention_mask=mask.repeat(K, 1),
                                   position_ids=pos.repeat(K, 1), cache=past_kv, use_cache=True)
            past_kv, past = out.cache, past + cur.shape[1]
            logits = self.composed.base_model.get_output_embeddings()(out.last_hidden_state[:B, -1]).float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1)
                if top_p < 1.0:   # nucleus: keep the smallest set of tokens whose mass reaches top_p
                    sp, si = probs.sort(-1, descending=True)
                    sp[(sp.cumsum(-1) - sp) > top_p] = 0
                    probs = torch.zeros_like(probs).scatter(-1, si, sp)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            out_ids = torch.cat([out_ids, nxt[:, None]], 1)
            cur, pos = nxt[:, None], pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
            if bool(done.all()):
                break
        return out_ids, MoTOutput(logits=logits, loss=None, experts=idx, weights=w, scores=scores)


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, start: int = 0, reduction: str = "mean") -> torch.Tensor:
    """Next-token loss predicting positions > ``start`` (reduction "none" gives [B] per-sequence means)."""
    lg = logits[:, start:-1].float()
    tgt = ids[:, start + 1:]
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)
    return ce.mean(1) if reduction == "none" else ce.mean()

