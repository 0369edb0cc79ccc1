"""LoRA deltas for the (token, expert) pairs the gate selected, and nothing else (Punica / S-LoRA style).

The gate keeps top-k experts per token (gate.py), so of a [M, K] weight matrix (M tokens, K resident experts)
at most M*k entries are non-zero. The dense formula ``((x @ A_cat) * w) @ B_cat`` costs M * K * r * (in + out)
multiply-adds whatever k is; this costs P * r * (in + out) for the P <= M*k selected pairs, so a decode step
does not grow with the number of resident experts:

    pairs (m, j) with w[m, j] > 0                       P pairs
    delta[m] = sum_j w[m, j] * B_j (A_j x_m)            A_j [r, in], B_j [out, r] (scaling folded into B)

Two ways to run the same sum, chosen by how many tokens each selected expert has:
  gather   (decode: a few tokens per expert)  A_j, B_j gathered per pair, two batched matmuls [P, r, in] x [P, in]
  segment  (prefill: many tokens per expert)  per selected expert, one matmul over its tokens
Both add the pairs' deltas with index_put_(accumulate=True) (not index_add_: on a loaded CPU with 2 threads its
OpenMP region stalled ~0.2 s per call even for a 3 x 16 tensor), so they agree with each other and with ``selected_delta_reference``
(a loop over tokens) to float tolerance; tests check all three against the dense formula.
"""
from __future__ import annotations

import torch

# Average tokens per selected expert at or above which one matmul per expert beats gathering factors per pair.
SEGMENT_MIN_TOKENS_PER_EXPERT = 16


def selected_delta(x: torch.Tensor, w: torch.Tensor, a_pool: torch.Tensor, b_pool: torch.Tensor, *,
                   strategy: str = "auto") -> torch.Tensor:
    """sum_j w[:, j] * B_j A_j x over the non-zero entries of ``w``.

    x: [M, in]; w: [M, K] (zeros where not selected); a_pool: [K, r, in]; b_pool: [K, out, r].
    Returns [M, out] in the matmul dtype (bf16 under CPU autocast).
    """
    tok, slot = w.nonzero(as_tuple=True)
    out_features = b_pool.shape[1]
    if tok.numel() == 0:
        return x.new_zeros(x.shape[0], out_features)
    weight = w[tok, slot]
    if strategy == "auto":
        n_experts = int(torch.unique(slot).numel())
        strategy = "segment" if tok.numel() >= SEGMENT_MIN_TOKENS_PER_EXPERT * n_experts else "gather"
    if strategy == "gather":
        xa = torch.bmm(a_pool[slot], x[tok].unsqueeze(-1).to(a_pool.dtype)).squeeze(-1)        # [P, r]
        xa = xa * weight[:, None].to(xa.dtype)
        d = torch.bmm(b_pool[slot], xa.unsqueeze(-1).to(b_pool.dtype)).squeeze(-1)            # [P, out]
        return d.new_zeros(x.shape[0], out_features).index_put_((tok,), d, accumulate=True)
    if strategy != "segment":
        raise ValueError(f"strategy={strategy!r} is not one of 'auto', 'gather', 'segment'")
    order = torch.argsort(slot, stable=True)
    tok, slot, weight = tok[order], slot[order], weight[order]
    experts, counts = torch.unique_consecutive(slot, return_counts=True)
    delta = None
    start = 0
    for j, n in zip(experts.tolist(), counts.tolist()):
        rows = tok[start:start + n]
        xa = x[rows].to(a_pool.dtype) @ a_pool[j].t()
        d = (xa * weight[start:start + n, None].to(xa.dtype)) @ b_pool[j].t()
        delta = d.new_zeros(x.shape[0], out_features) if delta is None else delta
        delta.index_put_((rows,), d.to(delta.dtype), accumulate=True)
        start += n
    return delta


def selected_delta_reference(x, w, a_pool, b_pool) -> torch.Tensor:
    """Token-by-token loop version of ``selected_delta``; only tests use it."""
    M, K = w.shape
    out = torch.zeros(M, b_pool.shape[1])
    for m in range(M):
        for j in range(K):
            if float(w[m, j]) != 0.0:
                out[m] += float(w[m, j]) * (b_pool[j].float() @ (a_pool[j].float() @ x[m].float()))
    return out


def pools_from_factors(factors: list, in_features: int, out_features: int,
                       rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A [K, r, in], B [K, out, r] * scaling) from per-slot (A, B, scaling) or None; lower ranks and absent
    modules are zero-padded (exact zeros, so they change no output). None when no slot holds factors."""
    present = [f for f in factors if f is not None]
    r = rank or max((a.shape[0] for a, _, _ in present), default=0)
    if not r:
        return None
    a_pool = torch.zeros(len(factors), r, in_features)
    b_pool = torch.zeros(len(factors), out_features, r)
    for j, f in enumerate(factors):
        write_slot(a_pool, b_pool, j, f)
    return a_pool, b_pool


def write_slot(a_pool: torch.Tensor, b_pool: torch.Tensor, j: int, factor) -> None:
    """Put one expert's (A, B, scaling) into slot j in place (None: zeros, an empty slot or an unadapted module)."""
    a_pool[j].zero_()
    b_pool[j].zero_()
    if factor is not None:
        a, b, scaling = factor
        if a.shape[0] > a_pool.shape[1]:
            raise ValueError(f"rank {a.shape[0]} does not fit a pool of rank {a_pool.shape[1]}")
        a_pool[j, :a.shape[0]] = a.detach()
        b_pool[j, :, :b.shape[1]] = b.detach() * scaling
