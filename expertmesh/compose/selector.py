"""RouterRetriever selection: score every member by the similarity of a prompt to its pilots.

All members' pilots sit in one faiss ``IndexFlatIP`` (pilots and prompt embeddings are L2-normalised, so inner
product = cosine). One search per batch returns every pilot's similarity; a member's score is, by ``rule``:
  mean  the mean over its own pilots (RouterRetriever's instance-average; the default, what min_score and
        score_temperature were calibrated on)
  top3  the mean of its 3 most similar pilots: a member whose domain is broad (several clusters) is not
        penalised for the clusters the prompt is far from
  max   its most similar pilot
Measured at 64 overlapping fine domains, 8 pilots each (benchmarks/routing_rules.py): top-1 0.646 (mean),
0.694 (top3), 0.674 (max). Exact search is right up to tens of thousands of pilots (hundreds of experts x 8-32
pilots); the index type is the one thing to change beyond that.
"""
from __future__ import annotations

import numpy as np

from expertmesh.compose.spec import PILOT_SCORES
from expertmesh.errors import ConfigError


class PilotIndex:
    def __init__(self, pilots, pilot_owner, num_members: int, rule: str = "mean"):
        import faiss

        if rule not in PILOT_SCORES:
            raise ConfigError(f"pilot_score={rule!r} is not one of {PILOT_SCORES}")
        self.rule = rule

        self.pilots = np.ascontiguousarray(np.asarray(pilots, dtype=np.float32))
        self.owner = np.asarray(pilot_owner, dtype=np.int64)
        self.num_members = num_members
        self.counts = np.bincount(self.owner, minlength=num_members).astype(np.float64)
        self.index = faiss.IndexFlatIP(self.pilots.shape[1])
        self.index.add(self.pilots)

    @property
    def dim(self) -> int:
        return int(self.pilots.shape[1])

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """[B, N] score of each query for each member under ``self.rule`` (NaN for a member without pilots)."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        sims, idx = self.index.search(q, self.index.ntotal)      # [B, P] every pilot, best first
        if self.rule != "mean":
            return self._best_scores(sims, idx, 1 if self.rule == "max" else 3)
        out = np.zeros((len(q), self.num_members), dtype=np.float64)
        for b in range(len(q)):
            out[b] = np.bincount(self.owner[idx[b]], weights=sims[b].astype(np.float64), minlength=self.num_members)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (out / self.counts).astype(np.float32)

    def _best_scores(self, sims: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
        """Mean of each member's k best similarities (all of them for a member with fewer than k pilots).
        Each row of ``sims`` is sorted best first, so a member's first k occurrences are its k best."""
        out = np.full((len(sims), self.num_members), np.nan, dtype=np.float64)
        for b in range(len(sims)):
            owner = self.owner[idx[b]]
            rank = np.empty_like(owner)                 # occurrence number of each pilot within its member
            order = np.argsort(owner, kind="stable")
            starts = np.searchsorted(owner[order], owner[order], side="left")
            rank[order] = np.arange(len(owner)) - starts
            keep = rank < k
            total = np.bincount(owner[keep], weights=sims[b][keep].astype(np.float64), minlength=self.num_members)
            count = np.bincount(owner[keep], minlength=self.num_members)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[b] = np.where(count > 0, total / count, np.nan)
        return out.astype(np.float32)


def top_m(scores: np.ndarray, allowed: np.ndarray, m: int | None) -> list[int]:
    """Indices of the (at most) m best-scoring allowed members, best first; ties broken by member order."""
    cand = [j for j in range(len(scores)) if allowed[j] and np.isfinite(scores[j])]
    cand.sort(key=lambda j: (-float(scores[j]), j))
    return cand if m is None else cand[:m]


def sequence_weights(scores: np.ndarray, chosen: list[int], temperature: float, num_members: int) -> np.ndarray:
    """[N+1] fixed weights: softmax(score / temperature) over ``chosen``, 0 elsewhere, entry 0 (public) = 0.

    With nothing chosen the public base takes all the weight (the explicit fallback)."""
    w = np.zeros(num_members + 1, dtype=np.float32)
    if not chosen:
        w[0] = 1.0
        return w
    s = np.array([scores[j] for j in chosen], dtype=np.float64) / temperature
    p = np.exp(s - s.max())
    w[[j + 1 for j in chosen]] = p / p.sum()
    return w
