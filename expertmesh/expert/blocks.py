"""Token blocks for training and evaluation: documents joined by EOS, cut into fixed-length blocks."""
from __future__ import annotations

import torch

from expertmesh.errors import DataError


def pack_blocks(tokenizer, texts: list[str], seq_len: int, *, max_blocks: int | None = None,
                what: str = "data") -> torch.Tensor:
    """[n, seq_len] token ids. Each document ends with EOS so blocks never silently merge two documents."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    need = None if max_blocks is None else max_blocks * seq_len
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise DataError(f"{what} holds {len(ids)} tokens, fewer than one block of seq_len={seq_len}; "
                        "add text or lower --seq-len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def mean_token_loss(forward, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss over all predicted tokens of ``blocks``; ``forward(ids)`` returns logits."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size]
            logits = forward(ids).float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    return total / max(count, 1)


# Blocks per forward/backward in training: the vocabulary-wide logits of a 128 x 64-token batch alone take
# ~1.6 GB in fp32 (SmolLM2's 49k vocabulary), and their gradients as much again, so large batches run as
# micro-batches of about this many tokens, with the same gradient.
MICRO_BATCH_TOKENS = 4096


def micro_batches(ids: torch.Tensor) -> list[torch.Tensor]:
    step = max(1, MICRO_BATCH_TOKENS // ids.shape[1])
    return [ids[i:i + step] for i in range(0, len(ids), step)]
