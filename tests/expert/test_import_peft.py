"""``import_peft_adapter``: a plain-PEFT LoRA adapter becomes an expert package, or is refused with the reason."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def train_plain_peft(base_dir: Path, texts: list[str], out: Path, *, steps: int = 15, **lora_kw) -> Path:
    """What a user does without expertmesh: LoraConfig + get_peft_model + a few AdamW steps + save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    kw = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    kw.update(lora_kw)
    peft_model = get_peft_model(model, LoraConfig(**kw))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = tok(" ".join(texts * 4), return_tensors="pt")["input_ids"][:, :64]
    torch.manual_seed(0)
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def plain_adapter(tmp_path_factory, tiny_base_dir):
    from expertmesh.testing import TINY_TEXTS

    return train_plain_peft(tiny_base_dir, TINY_TEXTS["medicine"], tmp_path_factory.mktemp("peft") / "med")


def _cfg(adapter, data, out, base_dir, **kw):
    from expertmesh.expert.import_peft import ImportConfig

    return ImportConfig(adapter=str(adapter), name="med", owner="clinic", data=str(data), out=str(out),
                        base=str(base_dir), seq_len=32, num_pilots=2, eval_blocks=4, **kw)


def test_import_makes_a_package_plain_peft_and_expertmesh_both_load(plain_adapter, tiny_base_dir, tiny_corpora,
                                                                     tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from expertmesh.base import load_base
    from expertmesh.expert.import_peft import import_peft_adapter
    from expertmesh.mixture.lora_io import load_expert

    base = load_base(str(tiny_base_dir))
    manifest = import_peft_adapter(_cfg(plain_adapter, tiny_corpora["medicine"], tmp_path / "pkg", tiny_base_dir),
                                   base=base)

    expert = load_expert(tmp_path / "pkg", expected_fingerprint=base.fingerprint)
    cfg = json.loads((tmp_path / "pkg" / "adapter_config.json").read_text())
    # the adapter config names the local base directory, so AutoPeft-style loading resolves it
    assert Path(cfg["base_model_name_or_path"]) == Path(tiny_base_dir)
    assert manifest.training["imported_from"] == "peft" and manifest.metrics["heldout_blocks"] >= 1
    assert all(m == m for m in (manifest.metrics["expert_loss"], manifest.metrics["ungated_loss"]))
    # the weights are the user's, unchanged: plain PEFT gives the same logits from the original and the package
    ids = base.tokenizer(["the patient was given aspirin"], return_tensors="pt")["input_ids"]
    outs = []
    for d in (plain_adapter, tmp_path / "pkg"):
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)), str(d))
        outs.append(m(input_ids=ids).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert set(expert.lora) and expert.rank == 4


def _edit_config(src: Path, dest: Path, **changes) -> Path:
    import shutil

    shutil.copytree(src, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg.update(changes)
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"),
    ({"peft_type": "IA3"}, "only LoRA"),
])
def test_refused_configs_name_the_field(plain_adapter, tiny_base_dir, tiny_corpora, tmp_path, changes, message):
    from expertmesh.errors import PackageError
    from expertmesh.expert.import_peft import import_peft_adapter

    bad = _edit_config(plain_adapter, tmp_path / "bad", **changes)
    with pytest.raises(PackageError, match=message):
        import_peft_adapter(_cfg(bad, tiny_corpora["medicine"], tmp_path / "pkg", tiny_base_dir))
    assert not (tmp_path / "pkg").exists()


def test_another_base_is_refused_by_fingerprint(plain_adapter, tiny_corpora, tmp_path):
    from expertmesh.errors import BaseMismatchError
    from expertmesh.expert.import_peft import import_peft_adapter
    from expertmesh.testing import make_tiny_base

    other = make_tiny_base(tmp_path / "other-base", seed=7)     # same shapes, other weights
    with pytest.raises(BaseMismatchError, match="not on the base in use"):
        import_peft_adapter(_cfg(plain_adapter, tiny_corpora["medicine"], tmp_path / "pkg", other))
    assert not (tmp_path / "pkg").exists()


def test_a_hub_id_needs_trained_on(plain_adapter, tiny_base_dir, tiny_corpora, tmp_path):
    from expertmesh.errors import BaseMismatchError
    from expertmesh.expert.import_peft import import_peft_adapter

    hub = _edit_config(plain_adapter, tmp_path / "hub", base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(BaseMismatchError, match="--trained-on"):
        import_peft_adapter(_cfg(hub, tiny_corpora["medicine"], tmp_path / "pkg", tiny_base_dir))
    manifest = import_peft_adapter(_cfg(hub, tiny_corpora["medicine"], tmp_path / "pkg", tiny_base_dir,
                                        trained_on=str(tiny_base_dir)))
    assert manifest.name == "med"


def test_embedding_targets_are_refused(tiny_base_dir, tiny_corpora, tmp_path):
    from expertmesh.errors import PackageError
    from expertmesh.expert.import_peft import import_peft_adapter
    from expertmesh.testing import TINY_TEXTS

    adapter = train_plain_peft(tiny_base_dir, TINY_TEXTS["law"], tmp_path / "emb", steps=1,
                               target_modules=["q_proj", "lm_head"])
    with pytest.raises(PackageError, match="lm_head"):
        import_peft_adapter(_cfg(adapter, tiny_corpora["law"], tmp_path / "pkg", tiny_base_dir))
