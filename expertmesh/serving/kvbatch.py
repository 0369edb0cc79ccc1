"""KVBatch: the KV cache of the rows that are generating now, so rows can join and leave at every step.

Layout: one transformers DynamicCache [B, heads, T, head_dim] per layer plus a 2-D attention mask [B, T].
Each row's real tokens are right-aligned (left padding), so one decode step appends one column for all rows.
Positions come from the mask (a row's n-th real token has position n-1), never from the column index, so
padding changes no row's RoPE and a row computes the same logits alone as in any batch (to float rounding).

    batch, logits, trace = KVBatch.prefill(model, seqs, allowed)   # new rows: full forward over their tokens
    logits, trace = batch.decode(model, next_tokens, allowed)      # one token per row, one forward
    batch.merge(other)                                             # rows that just joined
    batch.select(keep)                                             # rows that finished or must be recomputed

Every forward goes through ``ComposedModel.routing(allowed=[B, N], fixed_weights=[B, N+1] | None)``: each row
has its own expert mask (and, for sequence-level selection, its own weights) in the same forward
(S-LoRA/Punica-style heterogeneous batch), and ``trace=True`` gives each row's gate mass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from expertmesh.errors import ConfigError


class KVBatch:
    scores_prompts = True                   # prefill(all_logits=True) gives every position's logits (echo)

    def __init__(self, cache: DynamicCache, attn: torch.Tensor):
        self.cache = cache
        self.attn = attn                    # [B, T] long, 1 = real token

    @property
    def size(self) -> int:
        return int(self.attn.shape[0])

    @property
    def length(self) -> int:
        return int(self.attn.shape[1])

    # -- forwards -------------------------------------------------------------------------------------------
    @classmethod
    def prefill(cls, composed, seqs: list[list[int]], allowed: torch.Tensor | None, pad_id: int,
                fixed: torch.Tensor | None = None, *, all_logits: bool = False) -> tuple["KVBatch", torch.Tensor, object]:
        """Run the full token sequences of new rows; returns the batch, last-position logits [b, V] (with
        ``all_logits``: every position's, [b, T, V], left-padded like the rows), and the trace."""
        ids, attn = left_padded(seqs, pad_id)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=composed.base_model.config)
        logits, trace = _forward(composed, ids, attn, pos, cache, allowed, fixed, token_mask=attn,
                                 keep=0 if all_logits else 1)
        _check_layers(cache)
        return cls(cache, attn), logits, trace

    def decode(self, composed, tokens: list[int], allowed: torch.Tensor | None,
               fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, object]:
        ids = torch.tensor(tokens, dtype=torch.long)[:, None]
        pos = self.attn.sum(-1, keepdim=True)                # n real tokens so far -> position n
        self.attn = torch.cat([self.attn, torch.ones(self.size, 1, dtype=torch.long)], 1)
        return _forward(composed, ids, self.attn, pos, self.cache, allowed, fixed, token_mask=None)

    # -- reshaping ------------------------------------------------------------------------------------------
    def merge(self, other: "KVBatch") -> None:
        """Append other's rows (left-pad whichever cache is shorter)."""
        T = max(self.length, other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, T), _left_pad(theirs.keys, T)], 0)
            mine.values = torch.cat([_left_pad(mine.values, T), _left_pad(theirs.values, T)], 0)
        self.attn = torch.cat([F.pad(self.attn, (T - self.length, 0)), F.pad(other.attn, (T - other.length, 0))], 0)

    def select(self, keep: list[int]) -> None:
        """Keep these rows (in this order); then drop leading columns that are padding in every row."""
        idx = torch.tensor(keep, dtype=torch.long)
        self.attn = self.attn[idx]
        real = self.attn.any(0).nonzero()
        start = int(real[0]) if len(real) else self.length
        self.attn = self.attn[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]


def left_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, T], attention mask [B, T]) with every row's tokens right-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[i, T - len(s):] = 1
    return ids, attn


def _forward(composed, ids, attn, pos, cache, allowed, fixed, token_mask, keep: int = 1):
    """``keep`` = 1: last-position logits [B, V]; 0: all positions [B, T, V]."""
    with composed.routing(ids.shape[0], allowed=allowed, fixed_weights=fixed, attention_mask=token_mask, trace=True):
        out = composed.base_model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache,
                                  use_cache=True, logits_to_keep=keep)
    logits = out.logits.float()
    return (logits if keep == 0 else logits[:, -1]), composed.last_trace


def _left_pad(t: torch.Tensor, T: int) -> torch.Tensor:
    # zeros are never attended (the mask hides them) and keep the cache finite
    return t if t.shape[2] == T else F.pad(t, (0, 0, T - t.shape[2], 0))


def _check_layers(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ConfigError(f"continuous batching needs full-attention KV layers; this base uses "
                              f"{type(layer).__name__} (sliding-window or indexed caches are not supported)")
