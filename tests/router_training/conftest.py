"""Fixtures for coordinator training: three tiny experts that really differ, and a domain composition of them.

The session-wide tiny experts of tests/conftest.py train 20 steps and barely move off the base; routing only
matters when experts specialise, so these train longer (100 steps, lr 2e-2, r=8 on five modules; ~1 s each).
"""
from __future__ import annotations

from pathlib import Path

import pytest

DOMAINS = ("medicine", "law", "code")


@pytest.fixture(scope="session")
def rt_experts(tmp_path_factory, tiny_base_dir, tiny_corpora) -> Path:
    from expertmesh.expert.manifest import LoraSpec
    from tests.conftest import train_tiny_expert

    root = tmp_path_factory.mktemp("rt-experts")
    spec = LoraSpec(r=8, alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    for d in DOMAINS:
        train_tiny_expert(tiny_base_dir, tiny_corpora[d], root / d, d, steps=100, lr=2e-2, lora=spec)
    return root


@pytest.fixture(scope="session")
def rt_composition(tmp_path_factory, tiny_base_dir, rt_experts) -> Path:
    from expertmesh.compose.build import build_composition

    out = tmp_path_factory.mktemp("rt-comp") / "tiny"
    build_composition("tiny", rt_experts, "domain", out=out, provenance={"base": str(tiny_base_dir)})
    return out


@pytest.fixture()
def runtime(rt_composition, rt_experts, tiny_base_dir):
    from router_training.kinds import load_runtime

    rt = load_runtime(rt_composition, rt_experts, str(tiny_base_dir))
    yield rt
    rt.close()


def blocks_of(rt, corpora, split: str, seq_len: int = 32) -> dict:
    from router_training.task import load_blocks

    return {d: load_blocks(rt.base.tokenizer, corpora[d], seq_len, split=split) for d in DOMAINS}


def mean_loss(losses: dict) -> float:
    vals = [v for k, v in losses.items() if k != "mean"]
    return sum(vals) / len(vals)
