import pytest
import torch

from expertmesh.compose import FALLBACK_NOTE, CompositionRuntime, read_composition
from expertmesh.errors import UnknownExpertError
from tests.compose.conftest import fresh_base

PROMPTS = ["the patient was given aspirin", "the licensee shall not sublicense", "def main(argv): return"]


def _ids(rt, prompts):
    enc = rt.base.tokenizer(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_package_round_trip(compositions, tiny_experts):
    spec, tensors = read_composition(compositions / "all3")
    assert spec.member_names == list(tiny_experts)
    L, N, d = tensors["expert_rows"].shape
    assert N == 3 and tensors["anchor_rows"].shape == (L, d)
    assert tensors["pilot_owner"].dtype == torch.int64 and len(tensors["pilots"]) == len(tensors["pilot_owner"])
    assert all(len(m.digest) == 64 for m in spec.members)


def test_excluding_an_expert_equals_a_composition_without_it(compositions, tiny_experts, tiny_base_dir):
    # Prepare: the full composition with law excluded per request, and one that never had law
    full = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    never = CompositionRuntime.load(compositions / "nolaw", tiny_experts, fresh_base(tiny_base_dir))
    ids, mask = _ids(full, PROMPTS)
    # Execute
    plan = full.plan(PROMPTS, exclude=["law"])
    excluded = full.forward(ids, mask, plan, trace=True).logits
    trace = full.model.last_trace
    reference = never.logits(ids, mask, never.plan(PROMPTS))
    with_law = full.logits(ids, mask, full.plan(PROMPTS))
    # Assert
    assert torch.allclose(excluded, reference, atol=1e-5)
    assert (with_law - reference).abs().max() > 1e-4           # law really contributes when allowed
    law = trace.entries.index("law")
    assert float(trace.per_layer[..., law].abs().max()) == 0.0  # routing never touched law
    assert "law" not in plan.candidates[0]


def test_withdrawal_is_a_mask_change_and_remove_member_is_exact(compositions, tiny_experts, tiny_base_dir):
    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    ids, mask = _ids(rt, PROMPTS)
    excluded = rt.logits(ids, mask, rt.plan(PROMPTS, exclude=["law"]))
    rt.set_withdrawn({"law", "not-a-member"})
    withdrawn = rt.logits(ids, mask, rt.plan(PROMPTS))
    plan = rt.plan(PROMPTS, include=["law"])
    assert torch.equal(excluded, withdrawn)
    assert plan.fallback == [True] * 3 and FALLBACK_NOTE in plan.notes[0]
    assert any("withdrawn" in n for n in plan.notes[0])
    rt.remove_member("law")
    assert rt.member_names == ["medicine", "code"]
    assert torch.allclose(rt.logits(ids, mask, rt.plan(PROMPTS)), excluded, atol=1e-5)


def test_fallback_to_public_base_when_nothing_is_allowed(compositions, tiny_experts, tiny_base_dir):
    base = fresh_base(tiny_base_dir)
    with torch.no_grad():
        ids = base.tokenizer(PROMPTS[:1], return_tensors="pt")["input_ids"]
        plain = base.model(input_ids=ids).logits
    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, base)
    plan = rt.plan(PROMPTS[:1], exclude=["law", "medicine", "code"])
    gens = rt.generate(PROMPTS[:1], max_new_tokens=3, plan=plan)
    assert torch.allclose(rt.logits(ids, None, plan), plain, atol=1e-6)
    assert gens[0].trace["fallback"] and FALLBACK_NOTE in gens[0].trace["notes"]
    assert gens[0].trace["gate_mass"]["public"] == pytest.approx(1.0)


def test_unknown_expert_in_a_request_is_an_error(compositions, tiny_experts, tiny_base_dir):
    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    with pytest.raises(UnknownExpertError, match="nope"):
        rt.plan(PROMPTS, include=["nope"])
    with pytest.raises(UnknownExpertError):
        rt.plan(PROMPTS, exclude=["nope"])
