import json

import pytest
import torch
from safetensors.torch import load_file

from expertmesh.errors import ConfigError, DataError, PackageError
from expertmesh.expert.package import verify_package
from expertmesh.mixture.lora_io import load_expert
from expertmesh.mixture.model import ComposedModel
from tests.conftest import train_tiny_expert


def test_package_has_manifest_signature_and_metrics(tiny_experts, tiny_base):
    manifest = verify_package(tiny_experts["law"], expected_fingerprint=tiny_base.fingerprint)
    sig = load_file(str(tiny_experts["law"] / "signature.safetensors"))
    L, d = tiny_base.num_layers, tiny_base.hidden_size
    assert sig["router_rows"].shape == (L, d) and sig["anchor_rows"].shape == (L, d)
    assert sig["pilots"].shape == (manifest.signature.num_pilots, 384)
    assert torch.allclose(sig["pilots"].norm(dim=-1), torch.ones(len(sig["pilots"])), atol=1e-4)
    assert manifest.lora.r == 2 and set(manifest.lora.target_modules) == {"q_proj", "v_proj", "down_proj"}
    assert manifest.metrics["expert_loss"] < manifest.metrics["base_loss"]
    assert manifest.training["final_loss"] < manifest.training["first_loss"]
    assert manifest.base_fingerprint == tiny_base.fingerprint


def test_plain_peft_loads_the_expert_and_matches_ungated_delta(tiny_experts, tiny_base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 300, (2, 10))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)), str(tiny_experts["law"])).eval()
    with torch.no_grad():
        peft_logits = peft(input_ids=ids).logits
    composed = ComposedModel(base, [load_expert(tiny_experts["law"])])
    with torch.no_grad():
        forced = composed(ids, fixed_weights=torch.tensor([[0.0, 1.0]] * 2)).logits
    assert (peft_logits - base_logits).abs().max() > 1e-3      # the adapter really does something
    assert torch.allclose(forced, peft_logits, atol=1e-5)      # same delta as PEFT's own forward


def test_tampered_package_is_refused(tiny_experts, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_experts["medicine"], bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(PackageError, match="sha256"):
        verify_package(bad)
    (bad / "notes.pkl").write_bytes(b"x")
    with pytest.raises(PackageError, match="not allowed"):
        verify_package(bad)


def test_base_mismatch_is_refused(tiny_experts, tmp_path):
    from expertmesh.base import load_base
    from expertmesh.errors import BaseMismatchError
    from expertmesh.testing import make_tiny_base

    other = load_base(str(make_tiny_base(tmp_path / "other", seed=7)))
    with pytest.raises(BaseMismatchError, match="trained on base"):
        load_expert(tiny_experts["code"], expected_fingerprint=other.fingerprint)


def test_unknown_target_module_and_oversized_rank(tiny_base_dir, tiny_corpora, tmp_path):
    from expertmesh.expert.manifest import LoraSpec

    with pytest.raises(ConfigError, match="matches no linear layer"):
        train_tiny_expert(tiny_base_dir, tiny_corpora["law"], tmp_path / "a", "law",
                          lora=LoraSpec(r=2, alpha=4, target_modules=["attn_qkv"]))
    with pytest.raises(ConfigError, match="rank"):
        train_tiny_expert(tiny_base_dir, tiny_corpora["law"], tmp_path / "b", "law",
                          lora=LoraSpec(r=64, alpha=4, target_modules=["q_proj"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_data_errors_leave_no_output(tiny_base_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n\xff\xfe not utf8\n')
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "hi"}) + "\n")
    for f in (empty, bad, short):
        with pytest.raises(DataError):
            train_tiny_expert(tiny_base_dir, f, tmp_path / f"out-{f.stem}", "law")
        assert not (tmp_path / f"out-{f.stem}").exists()


def test_interrupted_run_leaves_no_package_and_resumes_to_same_weights(tiny_base_dir, tiny_corpora, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_12(step, loss):
        if step == 12:
            raise Stop

    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    def cfg(out):
        return TrainConfig(name="law", owner="acme", data=str(tiny_corpora["law"]), out=str(out), base=str(tiny_base_dir),
                           steps=16, batch_size=2, seq_len=32, checkpoint_every=5, precision="fp32",
                           lora=LoraSpec(r=2, alpha=4, target_modules=["q_proj"]), num_pilots=2, eval_blocks=2)

    with pytest.raises(Stop):
        train_expert(cfg(tmp_path / "resumed"), progress=False, on_step=stop_at_12)
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / ".resumed.checkpoint" / "progress.json").is_file()
    resumed = train_expert(cfg(tmp_path / "resumed"), progress=False)
    straight = train_expert(cfg(tmp_path / "straight"), progress=False)
    assert resumed.manifest.training["resumed_from_step"] == 10
    a = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not (tmp_path / ".resumed.checkpoint").exists()
