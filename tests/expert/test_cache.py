"""The expert cache (expertmesh/expert/cache.py): keyed by what determines the weights, never by path spelling."""
from __future__ import annotations

import os

from expertmesh.expert.cache import cache_key, cached_train
from expertmesh.expert.config import TrainConfig
from expertmesh.expert.manifest import LoraSpec


def _cfg(data, **kw) -> TrainConfig:
    return TrainConfig(**{"name": "law", "owner": "acme", "data": str(data), "out": "unused", "steps": 2,
                          "batch_size": 2, "seq_len": 16, "lora": LoraSpec(r=2, alpha=4, target_modules=["q_proj"]),
                          "num_pilots": 1, "eval_blocks": 1, **kw})


def test_key_follows_the_training_text_not_how_its_path_is_spelled(tiny_corpora, tmp_path, monkeypatch):
    absolute = tiny_corpora["law"].resolve()
    monkeypatch.chdir(absolute.parent)
    relative = os.path.relpath(absolute)
    fp = "f" * 64
    assert cache_key(_cfg(relative), fp) == cache_key(_cfg(absolute), fp)
    assert cache_key(_cfg(absolute, steps=3), fp) != cache_key(_cfg(absolute), fp)      # a weight-changing field
    assert cache_key(_cfg(tiny_corpora["medicine"]), fp).split("-")[-1] != cache_key(_cfg(absolute), fp).split("-")[-1]


def test_second_call_is_a_hit_with_the_other_spelling(tiny_corpora, tiny_base, tmp_path, monkeypatch):
    absolute = tiny_corpora["law"].resolve()
    first, hit1 = cached_train(_cfg(absolute), tmp_path / "cache", base=tiny_base)
    monkeypatch.chdir(absolute.parent)
    second, hit2 = cached_train(_cfg(os.path.relpath(absolute)), tmp_path / "cache", base=tiny_base)
    assert (hit1, hit2) == (False, True) and second == first and (first / "manifest.json").is_file()


def test_freezing_a_is_in_the_key_but_the_default_leaves_older_keys_alone(tiny_corpora):
    import hashlib
    import json

    cfg = _cfg(tiny_corpora["law"])
    d = cfg.to_dict()
    for k in ("out", "resume", "overwrite", "checkpoint_every", "eval_blocks", "description", "licence",
              "train_lora_a"):
        d.pop(k)
    before_the_field = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.digest() == before_the_field
    assert _cfg(tiny_corpora["law"], train_lora_a=False).digest() != before_the_field
