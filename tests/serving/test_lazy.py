"""Serving cost independent of N: signature-only composition loads, a resident pool bounded in MB, and bad
packages at lazy load failing only the requests that need them."""
from __future__ import annotations

import shutil

import pytest
import torch

from expertmesh.errors import ConfigError, PackageError
from expertmesh.serving.composition import Selection
from tests.serving.conftest import MEMBERS, run_sync


@pytest.fixture
def stored(tmp_path, serving_experts, tiny_base_dir):
    """(composition dir, member package dirs copied under tmp_path, base) for one test to damage freely."""
    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition

    dirs = {n: tmp_path / "experts" / n for n in MEMBERS}
    for n, d in dirs.items():
        shutil.copytree(serving_experts[n], d)
    base = load_base(str(tiny_base_dir))
    build_composition("tiny", dirs, "domain", out=tmp_path / "comp", top_k=2)
    return tmp_path / "comp", dirs, base


def _engine(stored, **settings):
    from expertmesh.serving.composition import load_served
    from expertmesh.serving.engine import Engine
    from expertmesh.serving.settings import ServeSettings

    comp_dir, dirs, base = stored
    comp = load_served(comp_dir, dirs, base)
    try:
        return Engine(comp, ServeSettings(max_context=256, **settings)).start()
    except Exception:
        comp.close()                     # the base is shared by the test's engines: give it back unwrapped
        raise


def _stop(engine) -> None:
    engine.stop()
    engine.comp.close()


def test_build_and_load_read_only_signatures(stored):
    # Prepare: every member's LoRA weights file is garbage after the build
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.runtime import CompositionRuntime

    comp_dir, dirs, base = stored
    for d in dirs.values():
        (d / "adapter_model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    # Execute: building and loading still work (neither opens the weights) ...
    spec, _ = build_composition("again", dirs, "domain")
    rt = CompositionRuntime.load(comp_dir, dirs, base, lazy=True)
    # Assert: ... no member's factors are in memory, and running it without a resident set is refused
    assert spec.member_names == list(MEMBERS) and all(e.lora == {} for e in rt.experts)
    with pytest.raises(ConfigError, match="loaded lazily"):
        rt.forward(torch.tensor([[1, 2, 3]]))
    rt.close()


def test_lazy_engine_serves_the_same_text_as_an_eager_one(stored, make_engine):
    eager = make_engine()
    lazy = _engine(stored, resident_budget_mb=1.0)
    try:
        for sel in (Selection(include=["law"]), Selection(), Selection(exclude=["code"])):
            a = run_sync(eager, "the licensee shall", max_tokens=5, selection=sel, ignore_eos=True)
            b = run_sync(lazy, "the licensee shall", max_tokens=5, selection=sel, ignore_eos=True)
            assert a[0] == b[0]
        res = lazy.stats()["resident"]
        assert res["loads"] == 3 and res["resident_peak_mb"] <= res["budget_mb"]
    finally:
        _stop(lazy)


def test_a_budget_that_cannot_hold_one_requests_experts_is_refused_at_load(stored):
    with pytest.raises(ConfigError, match=r"resident_budget_mb=0.001 holds 0 expert\(s\).*raise the budget"):
        _engine(stored, resident_budget_mb=0.001)


def test_a_budget_is_strict_and_lru_evicts_within_it(stored):
    from expertmesh.serving.resident import MB

    comp_dir, dirs, base = stored
    engine = _engine(stored, resident_budget_mb=1.0)
    try:
        slot_mb = engine.stats()["resident"]["slot_mb"]
    finally:
        _stop(engine)
    # a budget of exactly 2 slots cannot serve a token-gated composition whose requests may use all 3 ...
    with pytest.raises(ConfigError, match="one request may use 3"):
        _engine(stored, resident_budget_mb=2 * slot_mb + 1e-6)
    # ... while a retriever narrowing to top-1 fits in one slot, and evicts by LRU inside it
    from expertmesh.compose.build import build_composition

    build_composition("narrow", dirs, "domain", out=comp_dir, overwrite=True, selection="sequence", top_m=1)
    narrow = _engine(stored, resident_budget_mb=slot_mb * 1.5)
    try:
        pool = narrow.resident
        for name in ("law", "medicine", "code"):
            pool.ensure({name})
            assert pool.resident == [name]
        assert pool.stats()["resident_peak_mb"] <= 1.5 * slot_mb and pool.pool_bytes() <= 1.5 * slot_mb * MB
    finally:
        _stop(narrow)


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_bad_package_at_lazy_load_fails_only_the_requests_that_need_it(stored, damage):
    # Prepare: law's package breaks after the server loaded the composition
    comp_dir, dirs, base = stored
    engine = _engine(stored, resident_budget_mb=1.0)
    try:
        if damage == "delete":
            shutil.rmtree(dirs["law"])
        else:
            with open(dirs["law"] / "adapter_model.safetensors", "r+b") as f:
                f.seek(-4, 2)
                f.write(b"\xff\xff\xff\xff")
        # Execute + Assert: the request that needs law gets a clear error ...
        with pytest.raises(PackageError, match="law|adapter_model"):
            run_sync(engine, "the licensee shall", max_tokens=3, selection=Selection(include=["law"]))
        # ... the others are served, and the engine keeps running
        text, done = run_sync(engine, "the patient was", max_tokens=3, selection=Selection(include=["medicine"]),
                              ignore_eos=True)
        assert done["usage"]["completion_tokens"] == 3
        assert engine.stats()["counters"]["expert_load_errors"] == 1 and engine.ready
    finally:
        _stop(engine)
