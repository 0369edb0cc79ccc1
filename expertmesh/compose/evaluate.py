"""Held-out loss of a composition under a request policy, next to the public base on the same blocks.

Each block is its own request: its text is what the retriever sees (the whole block, as a server would see a
document-length prompt), so selection is judged on the same context the loss is measured on.
"""
from __future__ import annotations

import torch


def block_losses(rt, blocks: torch.Tensor, *, batch_size: int = 8, plan_for=None, trace: bool = False,
                 **plan_kwargs) -> tuple[float, torch.Tensor | None]:
    """Mean next-token loss over ``blocks`` [n, T]; ``plan_for(prompts) -> RoutingPlan`` or rt.plan(**kwargs).
    Returns (loss, mean gate mass [E] over blocks when ``trace``)."""
    tok = rt.base.tokenizer
    total, count, mass = 0.0, 0, None
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size]
        prompts = tok.batch_decode(ids, skip_special_tokens=True)
        plan = plan_for(prompts) if plan_for is not None else rt.plan(prompts, **plan_kwargs)
        out = rt.forward(ids, None, plan, trace=trace)
        logits = out.logits.float()
        total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
        if trace and rt.model.last_trace is not None:
            m = rt.model.last_trace.mass.sum(0)
            mass = m if mass is None else mass + m
    return total / max(count, 1), (mass / len(blocks) if mass is not None else None)


def evaluate_composition(rt, data: str, *, seq_len: int = 256, max_blocks: int = 16, **plan_kwargs) -> dict:
    from pathlib import Path

    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.blocks import pack_blocks

    path = Path(data)
    if path.is_dir() and (path / "heldout.jsonl").is_file():
        path = path / "heldout.jsonl"
    blocks = pack_blocks(rt.base.tokenizer, load_texts(str(path)), seq_len, max_blocks=max_blocks,
                         what=f"held-out data {path}")
    base_loss, _ = block_losses(rt, blocks, exclude=rt.member_names, selection="token")
    loss, mass = block_losses(rt, blocks, trace=True, **plan_kwargs)
    entries = ["public"] + rt.member_names
    return {"data": str(path), "blocks": len(blocks), "seq_len": seq_len, "base_loss": round(base_loss, 4),
            "composition_loss": round(loss, 4),
            "gate_mass": {n: round(float(mass[e]), 4) for e, n in enumerate(entries)} if mass is not None else {}}
