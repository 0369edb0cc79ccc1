"""Plain router-tuning functions: what trains, what travels, what improves."""
from __future__ import annotations

import pytest
import torch

from expertmesh.errors import ConfigError
from router_training.config import DPConfig, FederationConfig, TuneConfig
from router_training.kinds import CompositionMismatchError, check_composition, composition_digest
from router_training.task import (central_tune, evaluate_domains, make_router_trainable, pool_blocks, router_arrays,
                                  set_router_arrays, update_norm)
from tests.router_training.conftest import blocks_of


def test_central_tuning_improves_heldout_loss(runtime, tiny_corpora):
    # Prepare
    model = runtime.model
    train, held = blocks_of(runtime, tiny_corpora, "train"), blocks_of(runtime, tiny_corpora, "heldout")
    untuned = evaluate_domains(model, held)
    before = router_arrays(model)
    # Execute
    stats = central_tune(model, pool_blocks(train.values()), TuneConfig(steps=30, seq_len=32, lr=2e-2), total_steps=30)
    tuned = evaluate_domains(model, held)
    # Assert
    assert stats["tokens"] == 30 * 4 * 32
    assert tuned["mean"] < untuned["mean"] - 0.02, (untuned, tuned)
    assert update_norm(before, router_arrays(model)) > 0
    assert torch.equal(model.router.anchor_rows, runtime.tensors["anchor_rows"].float())   # public row frozen


def test_only_router_parameters_train(runtime):
    params = make_router_trainable(runtime.model, train_bias=True)
    assert [tuple(p.shape) for p in params] == [tuple(runtime.tensors["expert_rows"].shape), (4,)]
    assert not any(p.requires_grad for p in runtime.base.model.parameters())


def test_router_arrays_round_trip_and_shape_errors(runtime):
    arrays = router_arrays(runtime.model)
    assert list(arrays) == ["expert_rows", "bias"]
    arrays["bias"] = torch.tensor([0.0, 1.0, -1.0, 0.5])
    set_router_arrays(runtime.model, arrays)
    assert torch.equal(router_arrays(runtime.model)["bias"], arrays["bias"])
    with pytest.raises(ConfigError, match="expert_rows has shape"):
        set_router_arrays(runtime.model, {"expert_rows": torch.zeros(1, 2, 3), "bias": arrays["bias"]})
    with pytest.raises(ConfigError, match="lack"):
        set_router_arrays(runtime.model, {"bias": arrays["bias"]})


def test_composition_digest_mismatch_is_a_clear_error(rt_composition):
    digest = composition_digest(rt_composition)
    check_composition(digest, digest)
    with pytest.raises(CompositionMismatchError, match="composition version mismatch") as e:
        check_composition(digest, "0" * 64, where="owner clinic")
    assert e.value.code == "composition_mismatch" and "owner clinic" in e.value.message


def test_configs_validate_fields():
    with pytest.raises(ConfigError, match="lr"):
        TuneConfig(lr=0)
    with pytest.raises(ConfigError, match="dp.mode"):
        DPConfig(mode="maybe")
    with pytest.raises(ConfigError, match="unknown"):
        FederationConfig.from_dict({"roundz": 3})
    assert FederationConfig.from_dict({"dp": {"mode": "central"}}).dp.enabled
