"""The FedAvg single-LoRA baseline: trains, and its result is a normal expert package PEFT can load."""
from __future__ import annotations

import torch

from router_training.config import TuneConfig
from router_training.fedavg_lora import (build_lora_model, evaluate_lora, lora_arrays, save_lora_package,
                                         set_lora_arrays, train_lora)
from router_training.task import load_blocks

OPTIONS = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.0}


def test_lora_trains_and_saves_a_peft_loadable_expert(tmp_path, tiny_base, tiny_corpora):
    # Prepare
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from expertmesh.expert.package import verify_package

    model = build_lora_model(tiny_base, OPTIONS)
    train = load_blocks(tiny_base.tokenizer, tiny_corpora["law"], 32)
    held = load_blocks(tiny_base.tokenizer, tiny_corpora["law"], 32, split="heldout")
    before = evaluate_lora(model, held)
    start = lora_arrays(model)
    # Execute
    stats = train_lora(model, train, TuneConfig(steps=20, seq_len=32, lr=1e-2), seed=0)
    out = save_lora_package(model, tiny_base, tmp_path / "expert", name="fedavg-lora")
    # Assert
    assert evaluate_lora(model, held) < before - 0.05 and stats["tokens"] == 20 * 4 * 32
    manifest = verify_package(out, expected_fingerprint=tiny_base.fingerprint)
    assert manifest.name == "fedavg-lora" and manifest.lora.r == 4
    ids = held[:2]
    with torch.no_grad():
        ours = model(ids, fixed_weights=torch.tensor([[0.0, 1.0]]).expand(2, -1)).logits
    model.close()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base.path)), str(out)).eval()
    with torch.no_grad():
        theirs = peft(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    # arrays round trip (what FedAvg moves)
    model2 = build_lora_model(tiny_base, OPTIONS)
    assert all(torch.equal(start[k], v) for k, v in lora_arrays(model2).items())   # same seeded init everywhere
    set_lora_arrays(model2, lora_arrays(model))
    model2.close()
