"""Held-out evaluation of one expert (gated with the public base, as it was trained) against the base."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from expertmesh.base import load_base
from expertmesh.expert.blocks import mean_token_loss, pack_blocks
from expertmesh.mixture.lora_io import load_expert
from expertmesh.mixture.model import ComposedModel


def heldout_path(data: str | Path) -> Path:
    p = Path(data)
    return p / "heldout.jsonl" if p.is_dir() and (p / "heldout.jsonl").is_file() else p


def evaluate_expert(expert_dir, data, *, base=None, seq_len: int = 256, max_blocks: int = 32) -> dict:
    from expertmesh.corpora.records import load_texts

    path = heldout_path(data)
    texts = load_texts(path)                    # data errors before the base loads
    b = base if hasattr(base, "model") else load_base(base)
    expert = load_expert(expert_dir, expected_fingerprint=b.fingerprint)
    blocks = pack_blocks(b.tokenizer, texts, seq_len, max_blocks=max_blocks, what=str(path))
    model = ComposedModel(b.model, [expert])
    try:
        base_loss = mean_token_loss(lambda ids: model(ids, allowed=torch.zeros(1, dtype=torch.bool)).logits, blocks)
        expert_loss = mean_token_loss(lambda ids: model(ids).logits, blocks)
    finally:
        model.close()
    return {"expert": expert.name, "data": str(path), "blocks": len(blocks), "seq_len": seq_len,
            "base_loss": base_loss, "expert_loss": expert_loss,
            "base_ppl": math.exp(base_loss), "expert_ppl": math.exp(expert_loss)}
