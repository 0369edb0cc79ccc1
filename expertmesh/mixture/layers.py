"""MixtureLinear: a frozen base Linear plus the gate-weighted LoRA deltas of N stacked experts.

Per module the experts' factors sit in two stacked matrices, so the mixture is two matmuls for any N:

    xa = x @ A_cat                     A_cat [in, N*r]   (expert j's A^T in columns j*r..(j+1)*r)
    xa = xa * w (broadcast per expert) w [B, T, N] gate weights from the layer's router
    y  = W x + xa @ B_cat              B_cat [N*r, out]  (expert j's B^T * scaling_j in rows j*r..)

Experts of lower rank are zero-padded to r = max rank; an expert that does not adapt this module has zero
blocks. Padding adds exact zeros, so it changes no output.

That dense formula is what training uses (its factors change every step). Frozen factors (composition,
serving) are kept as pools A [K, r, in], B [K, out, r] instead, and each forward computes the deltas of only
the (token, expert) pairs the gate selected (sparse.py): at most top_k experts per token, so the cost of a
decode step does not grow with the number of experts held.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from expertmesh.mixture.sparse import pools_from_factors, selected_delta, write_slot


class MixtureLinear(nn.Module):
    def __init__(self, base: nn.Linear, layer_idx: int, state: "object"):
        super().__init__()
        self.base = base
        self.layer_idx = layer_idx
        self.state = state
        self.factors: list[tuple[torch.Tensor, torch.Tensor, float] | None] = []
        self.dropout = 0.0
        self._stacked: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._pools: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_factors(self, factors: list[tuple[torch.Tensor, torch.Tensor, float] | None], dropout: float = 0.0):
        """factors[j] = (A [r, in], B [out, r], scaling) of expert j, or None if j does not adapt this module."""
        self.factors = factors
        self.dropout = dropout
        self._stacked = None
        self._pools = None

    def set_pool(self, slots: int, rank: int) -> None:
        """Serve from a fixed pool of ``slots`` experts of rank <= ``rank`` (resident set): allocated once,
        filled in place by ``write_slot``, so loading an expert copies that expert only."""
        self.factors = [None] * slots
        self._stacked = None
        self._pools = (torch.zeros(slots, rank, self.base.in_features),
                       torch.zeros(slots, self.base.out_features, rank))

    def write_slot(self, j: int, factor: tuple[torch.Tensor, torch.Tensor, float] | None) -> None:
        write_slot(*self._pools, j, factor)
        self._stacked = None

    @property
    def pool_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._pools) if self._pools is not None else 0

    def _live(self) -> bool:
        return any(f is not None and (f[0].requires_grad or f[1].requires_grad) for f in self.factors)

    def _pooled(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._pools is None and any(f is not None for f in self.factors):   # not a pool: built from factors
            self._pools = pools_from_factors(self.factors, self.base.in_features, self.base.out_features)
        return self._pools

    def _stack(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """(A_cat [in, N*r], B_cat [N*r, out], r); with per-sample factors (A [S, r, in], B [S, out, r]: see
        ComposedModel.per_sample) every block is broadcast to [S, ...] and the matmuls batch over the samples."""
        live = self._live()
        if self._stacked is not None and not live:
            return self._stacked
        present = [f for f in self.factors if f is not None]
        if not present:
            return None
        r = max(a.shape[-2] for a, _, _ in present)
        lead = torch.broadcast_shapes(*(t.shape[:-2] for a, b, _ in present for t in (a, b)))
        a_blocks, b_blocks = [], []
        for f in self.factors:
            if f is None:
                a_blocks.append(torch.zeros(*lead, r, self.base.in_features))
                b_blocks.append(torch.zeros(*lead, self.base.out_features, r))
                continue
            a, b, scaling = f
            pad = r - a.shape[-2]
            a_blocks.append(F.pad(a, (0, 0, 0, pad)).expand(*lead, -1, -1))
            b_blocks.append(F.pad(b * scaling, (0, pad)).expand(*lead, -1, -1))
        a_cat = torch.cat(a_blocks, -2).transpose(-1, -2)     # [..., in, N*r]
        b_cat = torch.cat(b_blocks, -1).transpose(-1, -2)     # [..., N*r, out]
        if not live:
            self._stacked = (a_cat.contiguous(), b_cat.contiguous(), r)
            return self._stacked
        return a_cat, b_cat, r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        w = self.state.expert_weights(self.layer_idx)
        if w is None or not self.factors:
            return y
        if not self._live():
            pools = self._pooled()
            if pools is None:
                return y
            d = selected_delta(x.reshape(-1, x.shape[-1]), w.reshape(-1, w.shape[-1]), *pools)
            return y + d.view(*x.shape[:-1], -1).to(y.dtype)
        return y + self.dense_delta(x, w).to(y.dtype)

    def dense_delta(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The stacked formula over every held expert (training; the reference the sparse path is tested on)."""
        stacked = self._stack()
        if stacked is None:
            return torch.zeros(*x.shape[:-1], self.base.out_features)
        a_cat, b_cat, r = stacked
        if self.training and self.dropout > 0:
            x = F.dropout(x, p=self.dropout)
        xa = x.to(a_cat.dtype) @ a_cat
        lead = xa.shape[:-1]
        xa = (xa.view(*lead, -1, r) * w.to(xa.dtype)[..., None]).view(*lead, -1)
        return xa @ b_cat
