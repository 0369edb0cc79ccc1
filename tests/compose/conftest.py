"""Fixtures for composition tests: compositions over the session's tiny experts (tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def compositions(tmp_path_factory, tiny_experts, tiny_base_dir):
    """Compositions of the session's tiny experts, written once per module: domain with all three (its
    provenance names the base) and without law; retrieve top-1 ("both") and top-2 ("sequence")."""
    from expertmesh.compose import build_composition

    root = tmp_path_factory.mktemp("compositions")
    build_composition("all3", tiny_experts, "domain", out=root / "all3", top_k=2, base=fresh_base(tiny_base_dir))
    build_composition("nolaw", {k: v for k, v in tiny_experts.items() if k != "law"}, "domain", out=root / "nolaw",
                      top_k=2)
    build_composition("ret", tiny_experts, "retrieve", out=root / "ret", top_m=1)
    build_composition("seq", tiny_experts, "retrieve", out=root / "seq", selection="sequence", top_m=2)
    return root


def fresh_base(tiny_base_dir):
    """A Base of its own: a runtime wraps its model in place, so two runtimes never share one."""
    from expertmesh.base import load_base

    return load_base(str(tiny_base_dir))
