"""RouterRetriever selection: score every member by the mean similarity of a prompt to its pilots.

All members' pilots sit in one faiss ``IndexFlatIP`` (pilots and prompt embeddings are L2-normalised, so inner
product = cosine). One search per batch returns every pilot's similarity; a member's score is the mean over its
own pilots (RouterRetriever's instance-average). Exact search is right up to tens of thousands of pilots
(hundreds of experts x 8-32 pilots); the index type is the one thing to change beyond that.
"""
from __future__ import annotations

import numpy as np


class PilotIndex:
    def __init__(self, pilots, pilot_owner, num_members: int):
        import faiss

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
        """[B, N] mean cosine similarity of each query to each member's pilots (NaN for a member without pilots)."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        sims, idx = self.index.search(q, self.index.ntotal)      # [B, P] every pilot, best first
        out = np.zeros((len(q), self.num_members), dtype=np.float64)
        for b in range(len(q)):
            out[b] = np.bincount(self.owner[idx[b]], weights=sims[b].astype(np.float64), minlength=self.num_members)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (out / self.counts).astype(np.float32)


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
