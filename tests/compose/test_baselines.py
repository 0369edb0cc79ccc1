import pytest
import torch

from expertmesh.compose import CompositionRuntime
from expertmesh.compose.baselines import MergedModel, btm_logprobs, domain_posterior, merge_experts, oracle_plan
from tests.compose.conftest import fresh_base


@pytest.fixture(scope="module")
def comps(tmp_path_factory, tiny_experts):
    from expertmesh.compose import build_composition

    root = tmp_path_factory.mktemp("baseline-comps")
    for router in ("domain", "retrieve"):
        build_composition(router, tiny_experts, router, out=root / router)
    return {router: root / router for router in ("domain", "retrieve")}


PROMPTS = ["the patient was given aspirin", "the licensee shall not sublicense", "def main(argv): return"]


def test_uniform_cat_merge_is_the_mean_of_the_deltas(comps, tiny_experts, tiny_base_dir):
    from peft import PeftModel

    base = fresh_base(tiny_base_dir)
    ids = base.tokenizer(PROMPTS[:1], return_tensors="pt")["input_ids"]
    merged = merge_experts(base.model, tiny_experts, combination_type="cat")   # ranks 4/2/8 -> cat rank 14
    assert not isinstance(base.model, PeftModel)
    mm = MergedModel(base.model, merged)
    ours = mm.logits(ids)
    mm.close()
    # reference: each expert's delta at weight 1/3, summed, through our own one-hot composition of all three
    rt = CompositionRuntime.load(comps["domain"], tiny_experts, base)
    plan = rt.plan(PROMPTS[:1])
    plan.fixed_weights = torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3]])
    assert torch.allclose(ours, rt.logits(ids, None, plan), atol=1e-5)


def test_ties_merge_runs_on_heterogeneous_ranks(tiny_experts, tiny_base_dir):
    base = fresh_base(tiny_base_dir)
    merged = merge_experts(base.model, tiny_experts, combination_type="ties_svd", density=0.5, weights=[1.0] * 3)
    assert merged.rank == 8 and any("down_proj" in p for p in merged.lora)
    with pytest.raises(Exception, match="density"):
        merge_experts(base.model, tiny_experts, combination_type="ties")


def test_btm_mixes_single_expert_distributions(comps, tiny_experts, tiny_base_dir):
    rt = CompositionRuntime.load(comps["retrieve"], tiny_experts, fresh_base(tiny_base_dir))
    enc = rt.base.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    post = domain_posterior(rt, PROMPTS)
    assert torch.allclose(post.sum(1), torch.ones(3)) and post.argmax(1).tolist() == [0, 1, 2]
    logp = btm_logprobs(rt, enc["input_ids"], enc["attention_mask"], post)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(logp.shape[:2]), atol=1e-4)
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 1, 1]), 3).float()
    alone = rt.logits(enc["input_ids"], enc["attention_mask"], rt.plan(PROMPTS, include=["law"], selection="token"))
    assert torch.allclose(btm_logprobs(rt, enc["input_ids"], enc["attention_mask"], one_hot),
                          torch.log_softmax(alone, -1), atol=1e-5)
    oracle = oracle_plan(rt, PROMPTS, ["medicine", "law", "code"])
    assert oracle.candidates == [["medicine"], ["law"], ["code"]] and oracle.selection == "token"
