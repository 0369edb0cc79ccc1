"""Gate maths: per token and per layer, weights over {public base, expert 1..N}.

    h~      = h / rms(h)                                  (scale-free view of the layer input, fp32)
    logit_i = (h~ . row_i) / sqrt(d) / temperature + bias_i
    p       = softmax over the allowed entries (masked experts get -inf, so they never take mass)
    top-k   = keep the k largest p, renormalise them to sum to 1
    output  = W x + sum_{experts j in top-k} p_j * delta_j(x)     (the public entry contributes W x only)

Because the public path is always W x, a dropped expert changes nothing but the softmax's support: a
composition with expert j masked out equals one that never held j (to float tolerance).
"""
from __future__ import annotations

import math

import torch


def normalise_hidden(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    h = h.float()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def gate_weights(h: torch.Tensor, rows: torch.Tensor, *, top_k: int, temperature: float = 1.0,
                 bias: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Gate weights for one layer.

    h: [B, T, d] layer input; rows: [E, d] with row 0 = public, or [B, E, d] (a row set per sample: DP-SGD's
    per-sample gradients); bias: [E] or None;
    allowed: [B, E] bool (column 0 must be True) or None. Returns [B, T, E], each token's weights sum to 1.
    """
    logits = normalise_hidden(h) @ rows.float().transpose(-1, -2) / (math.sqrt(rows.shape[-1]) * temperature)
    if bias is not None:
        logits = logits + bias.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    k = min(top_k, probs.shape[-1])
    if k < probs.shape[-1]:
        # A stable sort breaks ties by entry index (as the reference does); topk's tie order depends on the
        # tensor's width, so with tied logits (e.g. h = 0 at a zero pad embedding) a masked column could change
        # which allowed entry wins, and opt-out would no longer equal never-having-had the expert.
        top, idx = probs.sort(dim=-1, descending=True, stable=True)
        probs = torch.zeros_like(probs).scatter(-1, idx[..., :k], top[..., :k])
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)


def gate_weights_reference(h, rows, *, top_k, temperature=1.0, bias=None, allowed=None):
    """Token-by-token loop version of ``gate_weights``; only tests use it, to check the batched maths."""
    B, T, _ = h.shape
    E = rows.shape[0]
    out = torch.zeros(B, T, E)
    for b in range(B):
        ok = [e for e in range(E) if allowed is None or bool(allowed[b, e])]
        for t in range(T):
            x = h[b, t].float()
            x = x / torch.sqrt((x * x).mean() + 1e-6)
            scores = {e: float(x @ rows[e].float()) / (math.sqrt(rows.shape[1]) * temperature)
                      + (float(bias[e]) if bias is not None else 0.0) for e in ok}
            m = max(scores.values())
            z = sum(math.exp(s - m) for s in scores.values())
            p = {e: math.exp(s - m) / z for e, s in scores.items()}
            keep = sorted(p, key=lambda e: -p[e])[:top_k]
            total = sum(p[e] for e in keep)
            for e in keep:
                out[b, t, e] = p[e] / total
    return out
