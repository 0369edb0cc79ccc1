"""LoRA deltas for the (token, expert) pairs the gate selected, and nothing else (Punica / S-LoRA style).

The gate keeps top-k experts per token (gate.py), so of a [M, K] weight matrix (M tokens, K resident experts)
at most M*k entries are non-zero. The dense formula ``((x @ A_cat) * w) @ B_cat`` costs M * K * r * (in + out)
multiply-adds whatever k is; this costs P * r * (in + out) for the P <= M*k selected pairs, so a decode step
does not grow with the number of resident experts:

    pairs (m, j) with w[m, j] > 0                       P pairs
    delta[m] = sum_j w[m, j] * B_j (A_j x_m)            A_j [r, in], B_j [out, r] (scaling folded into B)

Three ways to run the same sum (``strategy``); "auto" picks by the number of pairs P:
  gather   (P < 64: decode)   A_j, B_j gathered per pair, two torch.bmm: [P, 1, in] x [P, in, r], then x [P, r, out]
  padded   (P >= 64: prefill) each selected expert's tokens in one row of a zero-padded [E, Tmax, in] tensor
                              (E selected experts, Tmax the largest count), two torch.bmm with the E experts' factors
  segment  (kept for comparison) a Python loop with one matmul per selected expert: E iterations, so it grows with N
All add the pairs' deltas with index_put_(accumulate=True) (not index_add_: on a loaded CPU with 2 threads its
OpenMP region stalled ~0.2 s per call even for a 3 x 16 tensor), so they agree with each other and with
``selected_delta_reference`` (a loop over tokens) to float tolerance; tests check all of them against the dense formula.

Why this rule (benchmarks/sparse_bench.py -> scale-bench/sparse_bench.json: 1 thread, fp32 as served, one layer's
SmolLM2-135M q/k/v/o, r=8, top-2, tokens uniform over N; median ms per call at N=4 -> N=64, load ~5 on 2 cores):
  M=1024 (16 x 64 prefill)  segment 29.0 -> 56.8 (x1.96)  padded 29.9 -> 39.9 (x1.34)  gather 268 -> 255
  M=64   (1 x 64 prefill)   segment 3.6 -> 27.6 (x7.6)    padded 3.4 -> 8.0 (x2.4)     gather 8.8 -> 9.9
  M=32                      segment 3.0 -> 19.0           padded 2.6 -> 4.6            gather 4.7 -> 4.3
  M=16   (16-row decode)    segment 2.6 -> 12.0           padded 2.0 -> 3.3 (x1.7)     gather 2.3 -> 2.8 (x1.2)
  M=1                       segment 1.3 -> 1.3            padded 1.6 -> 1.5            gather 0.82 -> 0.83
gather copies P * r * (in + out) factor values, which is cheap for a few pairs and prohibitive for thousands;
padded's extra work is the padding (E * Tmax - P rows; ~1.5x at 2048 pairs over 64 experts) and the E experts'
factors, so it still grows somewhat with N at prefill, far less than segment's loop.
"""
from __future__ import annotations

import torch

# Pairs below which "auto" gathers factors per pair; at and above it pads per expert. 16-row top-2 decode (32 pairs)
# gathers: flattest and fastest at N=64. 32 tokens (64 pairs) is a tie at N=64 (4.6 vs 4.3 ms, 4.2 vs 4.9 in an
# earlier run) and padded is ~2x faster at N=4; from 64 tokens on padded wins at every N.
GATHER_MAX_PAIRS = 64
STRATEGIES = ("auto", "gather", "segment", "padded")


def selected_delta(x: torch.Tensor, w: torch.Tensor, a_pool: torch.Tensor, b_pool: torch.Tensor, *,
                   strategy: str = "auto") -> torch.Tensor:
    """sum_j w[:, j] * B_j A_j x over the non-zero entries of ``w``.

    x: [M, in]; w: [M, K] (zeros where not selected); a_pool: [K, r, in]; b_pool: [K, out, r].
    Returns [M, out] in the matmul dtype (bf16 under CPU autocast).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {', '.join(map(repr, STRATEGIES))}")
    # pairs in slot-major order (nonzero of w.t()), so each expert's pairs are one contiguous run
    slot, tok = w.t().nonzero(as_tuple=True)
    out_features = b_pool.shape[1]
    if tok.numel() == 0:
        return x.new_zeros(x.shape[0], out_features)
    weight = w[tok, slot]
    if strategy == "auto":
        strategy = "gather" if tok.numel() < GATHER_MAX_PAIRS else "padded"
    if strategy == "gather":
        return _gather(x, tok, slot, weight, a_pool, b_pool)
    counts = torch.bincount(slot, minlength=w.shape[1])
    experts = counts.nonzero().squeeze(1)
    if strategy == "segment":
        return _segment(x, tok, weight, experts, counts[experts], a_pool, b_pool)
    return _padded(x, tok, slot, weight, counts, experts, a_pool, b_pool)


def _gather(x, tok, slot, weight, a_pool, b_pool) -> torch.Tensor:
    """A_j, B_j gathered per pair: P * r * (in + out) factor copies, then per pair [1, in] x [in, r] and
    [1, r] x [r, out] as two torch.bmm over transposed views (~2x faster on 1 thread than [r, in] x [in, 1])."""
    xs = x[tok].unsqueeze(1).to(a_pool.dtype)                                                # [P, 1, in]
    xa = torch.bmm(xs, a_pool[slot].transpose(1, 2))                                         # [P, 1, r]
    xa = xa * weight[:, None, None].to(xa.dtype)
    d = torch.bmm(xa.to(b_pool.dtype), b_pool[slot].transpose(1, 2)).squeeze(1)             # [P, out]
    return d.new_zeros(x.shape[0], b_pool.shape[1]).index_put_((tok,), d, accumulate=True)


def _segment(x, tok, weight, experts, counts, a_pool, b_pool) -> torch.Tensor:
    """One matmul pair per selected expert over its run of tokens: a Python loop of E iterations."""
    delta = None
    start = 0
    for j, n in zip(experts.tolist(), counts.tolist()):
        rows = tok[start:start + n]
        xa = x[rows].to(a_pool.dtype) @ a_pool[j].t()
        d = (xa * weight[start:start + n, None].to(xa.dtype)) @ b_pool[j].t()
        delta = d.new_zeros(x.shape[0], b_pool.shape[1]) if delta is None else delta
        delta.index_put_((rows,), d.to(delta.dtype), accumulate=True)
        start += n
    return delta


def _padded(x, tok, slot, weight, counts, experts, a_pool, b_pool) -> torch.Tensor:
    """The segment sum without the loop: each selected expert's tokens in one row of a [E, Tmax, in] tensor
    (E selected experts, Tmax the most tokens any of them has), two torch.bmm, the real rows put back.

    Padding rows point at token 0 with weight 0, so they cost E * Tmax - P extra rows of compute and are dropped
    before the accumulate; the extra work is bounded by the caller's choice (auto uses it for many pairs)."""
    E, P = experts.numel(), tok.numel()
    n = counts[experts]
    t_max = int(n.max())
    rank = torch.cumsum(counts > 0, 0) - 1                 # slot -> its row among the selected experts
    seg = rank[slot]                                       # [P], non-decreasing (pairs are slot-major)
    starts = torch.cumsum(n, 0) - n
    flat = seg * t_max + (torch.arange(P, device=tok.device) - starts[seg])   # [P] index into E * t_max
    rows = tok.new_zeros(E * t_max)
    rows[flat] = tok
    w_pad = weight.new_zeros(E * t_max)
    w_pad[flat] = weight
    xs = x.index_select(0, rows).view(E, t_max, -1).to(a_pool.dtype)                        # [E, Tmax, in]
    xa = torch.bmm(xs, a_pool.index_select(0, experts).transpose(1, 2))                      # [E, Tmax, r]
    xa = xa * w_pad.view(E, t_max, 1).to(xa.dtype)
    b = b_pool.index_select(0, experts).transpose(1, 2)                                      # [E, r, out]
    d = torch.bmm(xa.to(b.dtype), b).view(E * t_max, -1)                                     # [E*Tmax, out]
    return d.new_zeros(x.shape[0], b_pool.shape[1]).index_put_((tok,), d[flat], accumulate=True)


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
