"""Token log-probabilities: computed from the logits the engine's forwards already produce, shaped for the wire.

What is scored is the composition exactly as the request runs it: the same forward (the row's expert mask,
its opt-outs, sequence weights and the withdrawn set) that samples its tokens. A log-probability is
``log_softmax(logits)`` of the model's distribution, before temperature and top-p (as vLLM and OpenAI report
them), so it does not depend on sampling settings.

    per position: TokenLogprob(token, logprob, top=[(id, logprob), ...])   top-N by logprob, N in [0, 20]
    prompt (echo): the first token has no logprob (None), then one entry per prompt token
Wire formats: OpenAI completions ``{tokens, token_logprobs, top_logprobs, text_offset}`` and chat
``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 20


@dataclass
class TokenLogprob:
    token: int
    text: str                           # the token decoded alone (a partial UTF-8 character shows as U+FFFD)
    logprob: float | None               # None for the first prompt token (nothing predicts it)
    offset: int                         # characters of the choice's text before this token
    top: list[tuple[str, float]] | None # the top-N tokens by logprob, most likely first


def score(tokenizer, logits: torch.Tensor, targets: list[int], top_n: int, offsets: list[int]) -> list[TokenLogprob]:
    """Entry i: log p(targets[i]) under logits[i] ([n, V]) and the top ``top_n`` alternatives. The caller holds
    the tokenizer's lock (fast tokenizers are not re-entrant)."""
    if not targets:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(targets, dtype=torch.long)[:, None])[:, 0].tolist()
    if top_n > 0:
        vals, ids = lp.topk(min(top_n, lp.shape[-1]), dim=-1)
        tops = [[(piece(tokenizer, t), v) for t, v in zip(ti, vi)] for ti, vi in zip(ids.tolist(), vals.tolist())]
    else:
        tops = [[] for _ in targets]
    return [TokenLogprob(t, piece(tokenizer, t), c, o, top)
            for t, c, o, top in zip(targets, chosen, offsets, tops)]


def piece(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def prefix_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Character offset of each token in decode(ids): the length of the text decoded before it (O(T^2) decoding,
    ~ms for a few hundred tokens)."""
    return [len(tokenizer.decode(ids[:i], skip_special_tokens=True)) for i in range(len(ids))]


def prompt_entries(tokenizer, logits: torch.Tensor, ids: list[int], top_n: int) -> list[TokenLogprob]:
    """Prompt scoring for ``echo``: ``logits`` [T, V] at the prompt's own positions (position t predicts t+1);
    the first token has no logprob (None), as in OpenAI's format."""
    offsets = prefix_offsets(tokenizer, ids)
    first = TokenLogprob(ids[0], piece(tokenizer, ids[0]), None, 0, None)
    return [first] + score(tokenizer, logits[:-1], ids[1:], top_n, offsets[1:])


def completion_logprobs(entries: list[TokenLogprob], *, shift: int = 0) -> dict:
    """OpenAI completions ``logprobs``: parallel lists over the tokens of the returned text; offsets move by
    ``shift`` (the echoed prompt's length, for generated tokens)."""
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [None if e.top is None else _top_dict(e) for e in entries],
        "text_offset": [e.offset + shift for e in entries],
    }


def _top_dict(e: TokenLogprob) -> dict[str, float]:
    out: dict[str, float] = {}
    for text, lp in e.top:
        out.setdefault(text, lp)          # two ids may decode alike: keep the likelier
    return out


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """OpenAI chat ``logprobs``: one object per generated token, with its UTF-8 bytes."""
    def obj(text: str, lp: float) -> dict:
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**obj(e.text, e.logprob), "top_logprobs": [obj(t, v) for t, v in e.top]}
                        for e in entries], "refusal": None}
