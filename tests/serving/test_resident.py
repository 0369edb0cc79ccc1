"""Bounded resident set: at most K experts' LoRA factors in memory, LRU eviction, exact reload."""
from __future__ import annotations

import torch

from expertmesh.serving.composition import Selection
from expertmesh.serving.kvbatch import KVBatch
from expertmesh.serving.resident import ResidentSet, package_loader
from tests.serving.conftest import run_sync


def _logits(comp, prompt, allowed):
    mask = torch.tensor([[n in allowed for n in comp.members]])
    return KVBatch.prefill(comp.model, [comp.encode(prompt)], mask, comp.tokenizer.pad_token_id)[1][0]


def test_eviction_and_reload_give_identical_logits(make_comp):
    # Prepare: reference logits with every expert resident, then a pool of one slot
    comp = make_comp()
    prompt = "the licensee shall not sublicense"
    ref = {n: _logits(comp, prompt, {n}) for n in comp.members}
    pool = ResidentSet(comp.model, 1, package_loader(comp.expert_dirs, comp.fingerprint))
    experts = {e.name: e for e in comp.model.experts}
    # Execute + Assert: each expert in turn; the others' factors are really dropped
    for _ in range(2):
        for n in comp.members:
            pool.ensure({n})
            assert pool.resident == [n]
            assert all(experts[m].lora == {} for m in comp.members if m != n)
            torch.testing.assert_close(_logits(comp, prompt, {n}), ref[n], atol=1e-6, rtol=1e-6)
    stats = pool.stats()
    assert stats["resident"] == 1 and stats["evictions"] >= 5 and stats["loads"] >= 5


def test_lru_keeps_the_recently_used(make_comp):
    comp = make_comp()
    pool = ResidentSet(comp.model, 2, package_loader(comp.expert_dirs, comp.fingerprint))
    pool.ensure({"medicine"})
    pool.ensure({"law"})
    pool.ensure({"medicine"})           # medicine is now the most recent
    pool.ensure({"code"})               # evicts law, the least recently used
    assert sorted(pool.resident) == ["code", "medicine"]


def test_a_request_needing_more_than_capacity_still_gets_all_its_experts(make_comp):
    comp = make_comp()
    prompt = "def main(argv): return"
    ref = _logits(comp, prompt, set(comp.members))
    pool = ResidentSet(comp.model, 1, package_loader(comp.expert_dirs, comp.fingerprint))
    pool.ensure(set(comp.members))
    torch.testing.assert_close(_logits(comp, prompt, set(comp.members)), ref, atol=1e-6, rtol=1e-6)
    assert pool.stats()["over_capacity"] == 1
    pool.ensure({"law"})                # shrinks back to the bound
    assert pool.resident == ["law"]


def test_engine_with_a_small_pool_serves_the_same_text(make_engine):
    sels = [Selection(include=["medicine"]), Selection(include=["law"]), Selection(include=["code"]),
            Selection(include=["medicine", "law"])]
    big = make_engine(max_resident_experts=64)
    small = make_engine(max_resident_experts=1)
    for s in sels:
        a = run_sync(big, "the patient was given", max_tokens=6, selection=s, ignore_eos=True)
        b = run_sync(small, "the patient was given", max_tokens=6, selection=s, ignore_eos=True)
        assert a[0] == b[0]
    res = small.stats()["resident"]
    assert res["capacity"] == 1 and res["resident"] <= 2 and res["loads"] >= 3
