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


def test_retriever_picks_the_expert_of_the_prompts_domain(compositions, tiny_experts, tiny_base_dir):
    from expertmesh.testing import TINY_TEXTS

    rt = CompositionRuntime.load(compositions / "ret", tiny_experts, fresh_base(tiny_base_dir))
    prompts = [TINY_TEXTS[d][1] for d in ("medicine", "law", "code")]
    plan = rt.plan(prompts)
    assert plan.candidates == [["medicine"], ["law"], ["code"]]
    assert plan.allowed.sum(1).tolist() == [1, 1, 1]
    assert max(plan.scores[1], key=plan.scores[1].get) == "law"
    # opting the best expert out hands the request to the next best, never to the excluded one
    plan2 = rt.plan(prompts[1:2], exclude=["law"])
    assert plan2.candidates[0] != ["law"] and "law" not in plan2.scores[0]


def test_sequence_selection_uses_fixed_weights_over_the_top_m(compositions, tiny_experts, tiny_base_dir):
    rt = CompositionRuntime.load(compositions / "seq", tiny_experts, fresh_base(tiny_base_dir))
    plan = rt.plan(PROMPTS)
    fw = plan.fixed_weights
    assert fw.shape == (3, 4) and torch.allclose(fw.sum(1), torch.ones(3))
    assert torch.all(fw[:, 0] == 0) and torch.all((fw[:, 1:] > 0).sum(1) == 2)
    rt.forward(*_ids(rt, PROMPTS), plan, trace=True)
    mass = rt.model.last_trace.mass
    assert torch.allclose(mass, fw, atol=1e-6)           # the gate is bypassed: exactly the fixed weights
    none = rt.plan(PROMPTS[:1], exclude=["law", "medicine", "code"])
    assert none.fixed_weights[0].tolist() == [1.0, 0.0, 0.0, 0.0] and none.fallback == [True]


def test_heterogeneous_ranks_and_targets_match_plain_peft(compositions, tiny_experts, tiny_base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    ids, _ = _ids(rt, PROMPTS[:1])
    for j, name in enumerate(rt.member_names):           # ranks 4/2/8, targets q,v / q,v,down / o
        plan = rt.plan(PROMPTS[:1])
        plan.fixed_weights = torch.nn.functional.one_hot(torch.tensor([j + 1]), 4).float()
        ours = rt.logits(ids, None, plan)
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)),
                                         str(tiny_experts[name])).eval()
        with torch.no_grad():
            ref = peft(input_ids=ids).logits
        assert torch.allclose(ours, ref, atol=1e-5), name


def test_load_refuses_another_base_and_another_expert_version(compositions, tiny_experts, tmp_path):
    import json
    import shutil

    from expertmesh.base import load_base
    from expertmesh.errors import BaseMismatchError, PackageError
    from expertmesh.testing import make_tiny_base

    other = load_base(str(make_tiny_base(tmp_path / "other", seed=7)))
    with pytest.raises(BaseMismatchError, match="built for base"):
        CompositionRuntime.load(compositions / "all3", tiny_experts, other)
    changed = tmp_path / "law"
    shutil.copytree(tiny_experts["law"], changed)
    m = json.loads((changed / "manifest.json").read_text())
    m["description"] = "retrained"
    (changed / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="not the version"):
        CompositionRuntime.load(compositions / "all3", {**tiny_experts, "law": changed}, _base_of(compositions))
    with pytest.raises(PackageError, match="no expert package"):
        CompositionRuntime.load(compositions / "all3", {"law": tiny_experts["law"]}, _base_of(compositions))


def _base_of(compositions):
    from expertmesh.base import load_base
    from expertmesh.compose import read_composition

    spec, _ = read_composition(compositions / "all3")
    return load_base(spec.provenance["base"])


def test_missing_members_can_be_dropped_exactly(compositions, tiny_experts, tiny_base_dir):
    never = CompositionRuntime.load(compositions / "nolaw", tiny_experts, fresh_base(tiny_base_dir))
    dropped = CompositionRuntime.load(compositions / "all3", {k: v for k, v in tiny_experts.items() if k != "law"},
                                      fresh_base(tiny_base_dir), missing="drop")
    ids, mask = _ids(never, PROMPTS)
    assert dropped.member_names == ["medicine", "code"] and dropped.notes
    assert torch.allclose(dropped.logits(ids, mask, dropped.plan(PROMPTS)), never.logits(ids, mask, never.plan(PROMPTS)),
                          atol=1e-5)


def test_generate_and_route_explain_who_answered(compositions, tiny_experts, tiny_base_dir):
    rt = CompositionRuntime.load(compositions / "ret", tiny_experts, fresh_base(tiny_base_dir))
    gens = rt.generate(PROMPTS, max_new_tokens=4)
    assert len(gens) == 3 and all(len(g.token_ids) <= 4 for g in gens)
    assert gens[1].trace["candidates"] == ["law"] and gens[1].trace["gate_mass"]["medicine"] == 0.0
    a, b = (rt.generate(PROMPTS[:1], max_new_tokens=5, temperature=0.9, top_p=0.9, seed=3) for _ in range(2))
    assert a[0].token_ids == b[0].token_ids                # sampling is reproducible with a seed
    r = rt.route(PROMPTS[:1])[0]
    assert len(r["per_layer"]) == rt.base.num_layers and r["gate_mass"]["public"] > 0
    assert sum(r["gate_mass"].values()) == pytest.approx(1.0, abs=1e-5)


def test_tag_and_licence_filters(compositions, tiny_experts, tiny_base_dir):
    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    assert rt.plan(PROMPTS[:1], tags=["law"]).candidates == [["law"]]
    assert rt.plan(PROMPTS[:1], exclude_tags=["code"]).candidates == [["medicine", "law"]]
    plan = rt.plan(PROMPTS[:1], licences=["MIT"])              # the tiny experts are "unspecified"
    assert plan.fallback == [True] and any("licence 'unspecified'" in n for n in plan.notes[0])
    assert rt.plan(PROMPTS[:1], licences=["unspecified"]).candidates == [["medicine", "law", "code"]]


def test_min_score_sends_prompts_no_expert_resembles_to_the_public_base(tmp_path, compositions, tiny_experts,
                                                                        tiny_base_dir):
    from expertmesh.compose.build import build_composition
    from expertmesh.errors import ConfigError
    from expertmesh.testing import TINY_TEXTS

    prompts = [TINY_TEXTS[d][1] for d in ("medicine", "law", "code")] + ["zebra quartz violin harbour"]
    free = CompositionRuntime.load(compositions / "ret", tiny_experts, fresh_base(tiny_base_dir))
    best = [max(s.values()) for s in free.plan(prompts).scores]
    threshold = sorted(best)[1] + 1e-4                  # between the second- and third-lowest best scores
    build_composition("ret-min", tiny_experts, "retrieve", out=tmp_path / "c", min_score=threshold)
    rt = CompositionRuntime.load(tmp_path / "c", tiny_experts, fresh_base(tiny_base_dir))
    plan = rt.plan(prompts)
    assert rt.spec.min_score == pytest.approx(threshold)
    for b, top in enumerate(best):
        if top >= threshold:
            assert plan.candidates[b] and not plan.fallback[b]
            assert all(plan.scores[b][n] >= threshold for n in plan.candidates[b])
        else:
            assert plan.fallback[b] and not bool(plan.allowed[b].any())
            assert any("min_score" in n for n in plan.notes[b]) and FALLBACK_NOTE in plan.notes[b]
    assert sum(plan.fallback) == 2
    with pytest.raises(ConfigError, match="min_score"):
        build_composition("bad", tiny_experts, "retrieve", min_score=1.5)


def test_pilot_score_is_stored_and_used_by_the_runtimes_retriever(tmp_path, tiny_experts, tiny_base_dir):
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.spec import read_composition
    from expertmesh.errors import ConfigError
    from expertmesh.testing import TINY_TEXTS

    build_composition("ret-max", tiny_experts, "retrieve", out=tmp_path / "c", pilot_score="max")
    assert read_composition(tmp_path / "c")[0].pilot_score == "max"
    rt = CompositionRuntime.load(tmp_path / "c", tiny_experts, fresh_base(tiny_base_dir))
    plan = rt.plan([TINY_TEXTS["law"][1]])
    index = rt._index                                  # the runtime's retriever applies the stored rule
    assert index.rule == "max"
    assert plan.candidates[0]
    with pytest.raises(ConfigError, match="pilot_score"):
        build_composition("bad", tiny_experts, "retrieve", pilot_score="median")


def test_without_is_a_composition_without_the_member_and_gives_the_runtime_back(compositions, tiny_experts,
                                                                                tiny_base_dir):
    # Prepare: the full composition, and one built without law on a base of its own
    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    never = CompositionRuntime.load(compositions / "nolaw", tiny_experts, fresh_base(tiny_base_dir))
    ids, mask = _ids(rt, PROMPTS)
    before = rt.logits(ids, mask, rt.plan(PROMPTS))
    # Execute
    with rt.without(["law"]) as sub:
        members = sub.member_names
        dropped = sub.logits(ids, mask, sub.plan(PROMPTS))
    with rt.without(["law", "medicine", "code"]) as nothing:
        assert nothing is None
    after = rt.logits(ids, mask, rt.plan(PROMPTS))
    rt.model.router.top_k = 1                                    # what `--top-k 1` sets on the running router
    with rt.without(["law"]) as sub:
        sub_top_k = sub.model.router.top_k
    # Assert: the same logits as the built composition; the full runtime computes what it did before
    assert members == ["medicine", "code"]
    assert torch.allclose(dropped, never.logits(ids, mask, never.plan(PROMPTS)), atol=1e-5)
    assert torch.equal(before, after)
    assert sub_top_k == 1 and rt.model.router.top_k == 1             # the override survives on both
    with pytest.raises(UnknownExpertError):
        with rt.without(["nope"]):
            pass


def test_opt_out_exactness_reports_each_member_and_catches_a_leak(compositions, tiny_experts, tiny_base_dir,
                                                                  monkeypatch):
    from expertmesh.compose.exactness import EXACT_TOL, opt_out_exactness

    # Prepare: three blocks of token ids (full blocks, as held-out evaluation packs them)
    rt = CompositionRuntime.load(compositions / "all3", tiny_experts, fresh_base(tiny_base_dir))
    blocks = torch.randint(0, rt.base.tokenizer.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    # Execute: honest opt-out, then a plan that ignores exclude (what a leak would look like)
    honest = opt_out_exactness(rt, blocks, batch_size=2)
    plan = rt.plan
    monkeypatch.setattr(rt, "plan", lambda prompts, exclude=None, **kw: plan(prompts, **kw))
    leaky = opt_out_exactness(rt, blocks)
    # Assert
    assert honest["blocks"] == 3 and list(honest["experts"]) == rt.member_names == ["medicine", "law", "code"]
    assert all(r["exact"] and r["max_abs_diff"] <= EXACT_TOL for r in honest["experts"].values())
    assert not any(r["exact"] for r in leaky["experts"].values())
