"""The router signature an owner computes locally: router rows (hidden space) and pilots (embedder space).

- anchor rows: the public entry of every gate, the mean RMS-normalised layer input of the base over a small
  public calibration text shipped with expertmesh; identical for every owner of one base.
- router rows: initialised (FlexOlmo) from the mean RMS-normalised layer input of the owner's own data, then
  trained with the adapter.
- pilots (RouterRetriever): k-means centroids of the owner's passage embeddings, L2-normalised.
Only these aggregates leave the owner's machine, never text.
"""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from expertmesh.mixture.gate import normalise_hidden


def public_calibration_texts() -> list[str]:
    text = resources.files("expertmesh").joinpath("data/public_calibration.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@torch.inference_mode()
def mean_layer_inputs(model, blocks: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      batch_size: int = 8) -> torch.Tensor:
    """[L, d]: per decoder layer, the mean over tokens of the RMS-normalised layer input."""
    L = model.config.num_hidden_layers
    total = torch.zeros(L, model.config.hidden_size, dtype=torch.float64)
    count = 0.0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size]
        mask = attention_mask[i:i + batch_size] if attention_mask is not None else torch.ones_like(ids)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        m = mask[..., None].double()
        for layer in range(L):  # hidden_states[layer] is the input of decoder layer `layer`
            total[layer] += (normalise_hidden(hidden[layer]).double() * m).sum((0, 1))
        count += float(mask.sum())
    return (total / max(count, 1.0)).float()


def anchor_rows(model, tokenizer) -> torch.Tensor:
    texts = public_calibration_texts()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return mean_layer_inputs(model, enc["input_ids"], enc["attention_mask"])


_PUBLIC_ANCHORS: dict[str, torch.Tensor] = {}


def public_anchor_rows(base) -> torch.Tensor:
    """``anchor_rows`` of a loaded Base, computed once per process and base fingerprint: every owner of one
    base computes the same rows from the same public text, and a bench training 64 experts would otherwise
    repeat that forward 64 times."""
    if base.fingerprint not in _PUBLIC_ANCHORS:
        _PUBLIC_ANCHORS[base.fingerprint] = anchor_rows(base.model, base.tokenizer)
    return _PUBLIC_ANCHORS[base.fingerprint].clone()


def passages(texts: list[str], words: int = 128, limit: int = 512) -> list[str]:
    """Split documents into ~``words``-word passages (what a request prompt looks like to the selector)."""
    out: list[str] = []
    for text in texts:
        toks = text.split()
        for i in range(0, len(toks), words):
            if len(toks[i:i + words]) >= 8:
                out.append(" ".join(toks[i:i + words]))
        if len(out) >= limit * 4:
            break
    rng = np.random.default_rng(0)
    if len(out) > limit:
        out = [out[i] for i in sorted(rng.choice(len(out), size=limit, replace=False))]
    return out


def pilot_embeddings(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k L2-normalised centroids (fewer if there are fewer passages)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = max(1, min(k, len(x)))
    if k == len(x):
        centroids = x.copy()
    else:
        # min_points_per_centroid=1: a small owner corpus is legitimate; faiss would warn on every call below 39/k
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
        km.train(x)
        centroids = km.centroids
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-9)
    return centroids.astype(np.float32)
