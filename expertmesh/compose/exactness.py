"""Opt-out exactness, measured: excluding expert j per request gives the logits of a composition without j.

DESIGN.md promises it (a masked member gets -inf in every gate, so exactly zero weight). This checks the promise
on real blocks, for every member: the composition's logits under ``exclude=[j]`` against those of the same
composition with j dropped (``CompositionRuntime.without``: rows, pilots and router tensors of j removed, which is
what building it without j holds). Both forwards plan through the retriever as serving does. With one member,
"without j" is the public base itself.

Cost per member: two forwards over the blocks and one rewrap of the base, so callers pass a few blocks.
"""
from __future__ import annotations

import torch

# The bound `expertmesh demo` holds opt-out to. Measured on the tiny test model (tests/compose/test_runtime.py):
# honest opt-out differs by <= 1e-7 (fp32 rounding), a plan that ignores the exclusion by 0.24-0.41.
EXACT_TOL = 1e-3


def opt_out_exactness(rt, blocks: torch.Tensor, *, batch_size: int = 8) -> dict:
    """{"blocks": n, "tolerance": EXACT_TOL, "experts": {name: {"max_abs_diff": d, "exact": d <= tol}}}
    over ``blocks`` [n, T] token ids (full blocks, no padding)."""
    tok = rt.base.tokenizer
    chunks = [blocks[i:i + batch_size] for i in range(0, len(blocks), batch_size)]
    prompts = [tok.batch_decode(ids, skip_special_tokens=True) for ids in chunks]
    out = {}
    for name in rt.member_names:
        excluded = [rt.logits(ids, None, rt.plan(p, exclude=[name])).float() for ids, p in zip(chunks, prompts)]
        with rt.without([name]) as sub:
            never = [_logits_without(rt, sub, ids, p).float() for ids, p in zip(chunks, prompts)]
        diff = max((float((a - b).abs().max()) for a, b in zip(excluded, never)), default=0.0)
        out[name] = {"max_abs_diff": diff, "exact": diff <= EXACT_TOL}
    return {"blocks": len(blocks), "tolerance": EXACT_TOL, "experts": out}


def _logits_without(rt, sub, ids: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    if sub is not None:
        return sub.logits(ids, None, sub.plan(prompts))
    with torch.inference_mode():                     # no member left: the plain public base
        return rt.base.model(input_ids=ids).logits
