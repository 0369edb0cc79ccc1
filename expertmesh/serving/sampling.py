"""Per-row sampling and incremental detokenisation for a batch whose rows have different parameters.

Each row has its own temperature, top-p and torch.Generator (seeded when the request gives ``seed``), so a
row's tokens do not depend on which other rows shared its batch. Temperature 0 is greedy (argmax).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from expertmesh.errors import InvalidInputError


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # The HTTP schema checks these too; the engine is also a library entry point, so check again here.
        if self.max_tokens < 0:     # 0: score the prompt only (echo + logprobs), generate nothing
            raise InvalidInputError(f"max_tokens={self.max_tokens} must be >= 0", detail={"field": "max_tokens"})
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidInputError(f"temperature={self.temperature} must be in [0, 2]", detail={"field": "temperature"})
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidInputError(f"top_p={self.top_p} must be in (0, 1]", detail={"field": "top_p"})
        if len(self.stop) > 4 or any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidInputError("stop must be at most 4 non-empty strings", detail={"field": "stop"})

    def generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return g


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """One next token per row of ``logits`` [B, V] (float32)."""
    out: list[int] = []
    greedy = logits.argmax(-1).tolist()
    for b, p in enumerate(params):
        if p.temperature == 0.0:
            out.append(int(greedy[b]))
            continue
        probs = torch.softmax(logits[b].float() / p.temperature, -1)
        if p.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            keep = (sorted_p.cumsum(0) - sorted_p) < p.top_p
            probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        out.append(int(torch.multinomial(probs, 1, generator=generators[b])))
    return out


class TextStream:
    """Turns generated token ids into text deltas, holding back partial UTF-8 and possible stop-string prefixes.

    ``push(token) -> (delta, stopped)``; ``finish() -> delta`` flushes what was held back.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""           # decoded so far (after truncation at a stop string)
        self.emitted = 0         # chars of self.text already handed out
        self._hold = max((len(s) for s in stop), default=1) - 1

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return "", False     # a multi-byte character is not complete yet
        self.text = text
        for s in self.stop:
            at = self.text.find(s, max(0, self.emitted - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                return self._take(len(self.text)), True
        return self._take(max(self.emitted, len(self.text) - self._hold)), False

    def finish(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        delta = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return delta
