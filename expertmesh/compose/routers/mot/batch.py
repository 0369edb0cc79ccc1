"""MoTBatch: the serving engine's batch for a ``mot`` composition (same interface as serving's KVBatch).

The engine's continuous batching needs rows that join and leave at every step. A MoT row runs K expert
streams with cross-stream interaction, whose KV and latent caches do not fit KVBatch's one-stream layout, so
this batch keeps each row's tokens instead and recomputes the whole (left-padded) sequences at every step:
exact, and rows with different selections and opt-outs still share one forward, at the price of O(length)
work per generated token. The selection is a function of the prompt's first ``select_tokens`` tokens, so it
stays fixed while a row generates; after a withdrawal the engine re-plans the row and prefills it again, which
selects anew without the withdrawn expert.

    batch, logits, trace = MoTBatch.prefill(model, seqs, allowed, pad_id)
    logits, trace = batch.decode(model, next_tokens, allowed)
"""
from __future__ import annotations

import torch

from expertmesh.errors import ConfigError
from expertmesh.serving.kvbatch import left_padded


class MoTBatch:
    def __init__(self, seqs: list[list[int]], pad_id: int):
        self.seqs = [list(s) for s in seqs]
        self.pad_id = pad_id

    @property
    def size(self) -> int:
        return len(self.seqs)

    @classmethod
    def prefill(cls, model, seqs: list[list[int]], allowed: torch.Tensor | None, pad_id: int,
                fixed: torch.Tensor | None = None) -> tuple["MoTBatch", torch.Tensor, object]:
        batch = cls(seqs, pad_id)
        logits, trace = batch._forward(model, allowed, fixed, new_tokens=[len(s) for s in seqs])
        return batch, logits, trace

    def decode(self, model, tokens: list[int], allowed: torch.Tensor | None,
               fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, object]:
        if len(tokens) != self.size:
            raise ConfigError(f"decode got {len(tokens)} tokens for {self.size} rows")
        for s, t in zip(self.seqs, tokens):
            s.append(int(t))
        return self._forward(model, allowed, fixed, new_tokens=[1] * self.size)

    def merge(self, other: "MoTBatch") -> None:
        self.seqs.extend(other.seqs)

    def select(self, keep: list[int]) -> None:
        self.seqs = [self.seqs[i] for i in keep]

    def _forward(self, model, allowed: torch.Tensor | None, fixed: torch.Tensor | None, new_tokens: list[int]):
        """Last-position logits [B, V] and the trace (weighted by the tokens this call adds per row, as KVBatch's
        is); rows with no allowed expert are answered by the base."""
        if fixed is not None:
            raise ConfigError("a 'mot' composition selects its own experts; it takes no sequence-level weights")
        ids, attn = left_padded(self.seqs, self.pad_id)
        n = len(model.expert_names)
        allowed = torch.ones(self.size, n, dtype=torch.bool) if allowed is None else allowed.to(torch.bool)
        live = allowed.any(1)
        logits = torch.empty(self.size, model.base_model.config.vocab_size)
        out = None
        if bool(live.any()):
            rows = live.nonzero().flatten()
            out = model.mot(ids[rows], attn[rows], allowed=allowed[rows])
            logits[rows] = out.logits[:, -1].float()
        if not bool(live.all()):
            rows = (~live).nonzero().flatten()
            pos = (attn[rows].cumsum(1) - 1).clamp_min(0)    # positions from the mask: padding shifts nothing
            with model.composed.routing(len(rows), allowed=torch.zeros(len(rows), n, dtype=torch.bool)):
                base = model.base_model(input_ids=ids[rows], attention_mask=attn[rows], position_ids=pos)
            logits[rows] = base.logits[:, -1].float()
        trace = model.trace_for(out, live, self.size)
        trace.tokens = torch.tensor(new_tokens, dtype=torch.float32)
        return logits, trace
