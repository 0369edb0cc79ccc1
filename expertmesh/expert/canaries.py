"""Canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets planted in the training stream, so an
owner can measure how much of *one rare string* its expert memorised.

A canary is ``"{PREFIX}{secret}"`` with a ``secret`` of ``digits`` random decimal digits (the randomness space R
has 10**digits members). ``expert train --canaries K`` inserts K of them, each ``repeats`` times, as documents of
their own at seeded positions among the training documents, and writes them to ``<out>.canaries.json`` *beside*
the package (never inside: the package is what leaves the machine). The manifest records only the count, the
repeats and the sha256 of that file, so the audit can tell it was handed the right one.

Exposure (paper, Sec. 4): exposure = log2|R| - log2 rank, where rank is the canary's position when all of R is
sorted by the model's log-perplexity of the secret given the prefix. |R| = 10**9 cannot be enumerated, so
``exposure`` follows the paper's Sec. 4.3 estimate: sample ``candidates`` secrets from R, fit a normal to their
log-perplexities and read the canary's tail probability: exposure = -log2 P(X <= canary). The sampled rank bound
(``rank_exposure``, at most log2(candidates+1)) is returned beside it as a model-free check.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from expertmesh.errors import DataError
from expertmesh.fileio import write_json_atomic

PREFIX = "my secret number is "
CANARY_FORMAT = "expertmesh-canaries/1"


@dataclass(frozen=True)
class CanarySet:
    secrets: list[str]
    digits: int
    repeats: int
    seed: int

    @property
    def texts(self) -> list[str]:
        return [PREFIX + s for s in self.secrets]

    def to_dict(self) -> dict:
        return {"format": CANARY_FORMAT, "prefix": PREFIX, "secrets": self.secrets, "digits": self.digits,
                "repeats": self.repeats, "seed": self.seed}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def make_canaries(k: int, *, seed: int, digits: int = 9, repeats: int = 8) -> CanarySet:
    rng = random.Random(f"canaries/{seed}")
    return CanarySet([_random_secret(rng, digits) for _ in range(k)], digits, repeats, seed)


def _random_secret(rng: random.Random, digits: int) -> str:
    # Digits separated by spaces: every digit is one token in byte-level BPE vocabularies, so the secret's
    # log-perplexity sums exactly ``digits`` independent choices of 10 (what |R| = 10**digits assumes).
    return " ".join(str(rng.randrange(10)) for _ in range(digits))


def insert_canaries(texts: list[str], canaries: CanarySet) -> list[str]:
    """Training texts with each canary inserted ``repeats`` times as its own document at seeded positions."""
    out = list(texts)
    rng = random.Random(f"canary-positions/{canaries.seed}")
    for text in canaries.texts:
        for _ in range(canaries.repeats):
            out.insert(rng.randrange(len(out) + 1), text)
    return out


def canary_path(package_dir: str | Path) -> Path:
    p = Path(package_dir)
    return p.with_name(p.name + ".canaries.json")


def save_canaries(package_dir: str | Path, canaries: CanarySet) -> Path:
    path = canary_path(package_dir)
    write_json_atomic(path, canaries.to_dict())
    return path


def load_canaries(path: str | Path) -> CanarySet:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"canary file {path} does not exist (expert train --canaries K writes it beside the "
                        "package)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"canary file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != CANARY_FORMAT or d.get("prefix") != PREFIX:
        raise DataError(f"canary file {path} is not an {CANARY_FORMAT} file")
    try:
        return CanarySet([str(s) for s in d["secrets"]], int(d["digits"]), int(d["repeats"]), int(d["seed"]))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"canary file {path} lacks secrets/digits/repeats/seed") from None


def secret_log_perplexities(forward, tokenizer, secrets: list[str], *, batch_size: int = 32) -> torch.Tensor:
    """-sum log p(secret tokens | PREFIX) in bits, one per secret (all secrets have the same token count).

    ``forward(ids, keep)`` returns the logits of the last ``keep`` positions: the n secret tokens are predicted
    from the last n+1 positions but one, so only those pass through the vocabulary-wide output layer."""
    prefix = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    rows = [prefix + tokenizer(s, add_special_tokens=False)["input_ids"] for s in secrets]
    if len({len(r) for r in rows}) != 1:
        raise DataError("canary secrets tokenise to different lengths; use single-token digits")
    ids = torch.tensor(rows, dtype=torch.long)
    n = ids.shape[1] - len(prefix)                      # secret tokens per row
    out = []
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size):
            x = ids[i:i + batch_size]
            logp = torch.log_softmax(forward(x, n + 1)[:, -(n + 1):-1].float(), -1)
            tok = logp.gather(-1, x[:, -n:, None])[..., 0]
            out.append(-tok.sum(1) / math.log(2))
    return torch.cat(out)


def exposure(forward, tokenizer, canaries: CanarySet, *, candidates: int = 1000, seed: int = 0) -> dict:
    """Per-canary exposure (normal-fit estimate and sampled-rank bound), in bits; log2|R| is the maximum."""
    rng = random.Random(f"exposure/{seed}")
    pool = [_random_secret(rng, canaries.digits) for _ in range(candidates)]
    ref = secret_log_perplexities(forward, tokenizer, pool).double()
    mine = secret_log_perplexities(forward, tokenizer, canaries.secrets).double()
    mu, sigma = float(ref.mean()), max(float(ref.std()), 1e-6)
    log2_space = canaries.digits * math.log2(10)
    fitted, ranked = [], []
    for x in mine.tolist():
        # P(X <= x) under N(mu, sigma); log of the lower tail computed stably for far-out canaries.
        z = (x - mu) / sigma
        log_cdf = math.log(max(0.5 * math.erfc(-z / math.sqrt(2)), 1e-300))
        fitted.append(min(-log_cdf / math.log(2), log2_space))
        rank = 1 + int((ref < x).sum())
        ranked.append(math.log2(candidates + 1) - math.log2(rank))
    return {"exposure": fitted, "rank_exposure": ranked, "log2_space": log2_space, "candidates": candidates}
