"""Flower simulations (run_simulation, tiny models): the tuned router improves held-out loss; faults and DP.

Each simulation starts Ray once (one actor, one core) and takes ~15-20 s on an idle 2-core machine.
"""
from __future__ import annotations

import math

import pytest

from expertmesh.errors import ExpertMeshError
from router_training.client_app import OwnerSetup
from router_training.kinds import CompositionMismatchError
from router_training.server_app import ServerSetup
from router_training.simulate import simulate
from tests.router_training.conftest import DOMAINS, blocks_of

TRAIN = {"steps": 10, "seq_len": 32, "lr": 2e-2, "eval_blocks": 8}


def _owners(comp, experts, base, corpora, domains=DOMAINS):
    return [OwnerSetup(str(comp), str(experts), str(corpora[d]), base=str(base), owner=d) for d in domains]


# A round waits for replies up to round_timeout; on a loaded 2-core machine one tiny round has taken over 120 s,
# so the bound is generous (1 h): a healthy run returns as soon as the replies arrive and never waits it out.
GENEROUS_ROUND_TIMEOUT_S = 3600


def _run(tmp_path, comp, experts, base, owners, **fed):
    setup = ServerSetup(str(comp), str(experts), str(tmp_path / "run"), base=str(base), train=TRAIN,
                        federation={"rounds": 3, "min_clients": 2, "round_timeout": GENEROUS_ROUND_TIMEOUT_S,
                                    **fed})
    return simulate(setup, owners, cpus_per_client=1, total_cpus=1)


def test_three_owner_simulation_improves_heldout_loss(tmp_path, rt_composition, rt_experts, tiny_base_dir,
                                                      tiny_corpora):
    # Prepare: the untuned composition's held-out loss per owner
    from router_training.kinds import load_runtime
    from router_training.task import evaluate_domains

    rt = load_runtime(rt_composition, rt_experts, str(tiny_base_dir))
    held = blocks_of(rt, tiny_corpora, "heldout")
    untuned = evaluate_domains(rt.model, held)
    rt.close()
    # Execute
    history = _run(tmp_path, rt_composition, rt_experts, tiny_base_dir,
                   _owners(rt_composition, rt_experts, tiny_base_dir, tiny_corpora))
    # Assert: every round aggregated all three owners; the stored tuned composition is better on held-out data
    assert history["aggregated_rounds"] == 3
    assert all(len(r["train"]) == 3 and not r["failures"] for r in history["rounds"])
    tuned_rt = load_runtime(history["output"]["composition"], rt_experts, str(tiny_base_dir))
    assert tuned_rt.spec.router_type == "tuned"
    tuned = evaluate_domains(tuned_rt.model, blocks_of(tuned_rt, tiny_corpora, "heldout"))
    tuned_rt.close()
    assert tuned["mean"] < untuned["mean"] - 0.01, (untuned, tuned)


def test_dropped_owner_does_not_break_rounds_with_local_dp(tmp_path, rt_composition, rt_experts, tiny_base_dir,
                                                           tiny_corpora):
    # Prepare: the third owner fails in every round (its data is gone), the others run with local DP
    owners = _owners(rt_composition, rt_experts, tiny_base_dir, tiny_corpora)
    owners[2] = OwnerSetup(str(rt_composition), str(rt_experts), str(tmp_path / "gone"), base=str(tiny_base_dir),
                           owner="gone")
    # Execute
    history = _run(tmp_path, rt_composition, rt_experts, tiny_base_dir, owners, rounds=2,
                   dp={"mode": "local", "clipping_norm": 1.0, "epsilon": 50.0})
    # Assert
    assert history["aggregated_rounds"] == 2
    for r in history["rounds"]:
        assert sorted(r["train"]) == ["law", "medicine"]
        assert any("does not exist" in f["reason"] for f in r["failures"])
        assert all(v["update-norm"] > 0 for v in r["train"].values())
    assert history["dp_noise_std"] == pytest.approx(1.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 50.0)


def test_central_dp_runs_and_clips(tmp_path, rt_composition, rt_experts, tiny_base_dir, tiny_corpora):
    history = _run(tmp_path, rt_composition, rt_experts, tiny_base_dir,
                   _owners(rt_composition, rt_experts, tiny_base_dir, tiny_corpora), rounds=1,
                   dp={"mode": "central", "clipping_norm": 0.5, "noise_multiplier": 0.1})
    assert history["aggregated_rounds"] == 1
    assert history["dp_noise_std"] == pytest.approx(0.1 * 0.5 / 3)


def test_mismatched_composition_versions_are_rejected(tmp_path, rt_composition, rt_experts, tiny_base_dir,
                                                      tiny_corpora):
    # Prepare: two owners hold another version of the composition (same members, other policy)
    from expertmesh.compose.build import build_composition

    other = tmp_path / "other"
    build_composition("tiny", rt_experts, "domain", out=other, top_k=1, provenance={"base": str(tiny_base_dir)})
    owners = _owners(rt_composition, rt_experts, tiny_base_dir, tiny_corpora)
    for i in (1, 2):
        owners[i].composition = str(other)
    # Execute / Assert: one good owner < min_clients=2 in every round, so nothing aggregates; the error says why
    with pytest.raises(CompositionMismatchError, match="composition version mismatch") as e:
        _run(tmp_path, rt_composition, rt_experts, tiny_base_dir, owners, rounds=1)
    assert e.value.code == "composition_mismatch"
    assert not (tmp_path / "run" / "composition").exists()


def test_mot_federated_through_the_same_apps(tmp_path, rt_composition, rt_experts, tiny_base_dir, tiny_corpora):
    from router_training.kinds import load_runtime

    setup = ServerSetup(str(rt_composition), str(rt_experts), str(tmp_path / "run"), base=str(tiny_base_dir),
                        kind="mot", kind_options={"num_interaction": 1, "latent_dim": 16, "num_heads": 2,
                                                  "select_tokens": 8, "selector_hidden": 16},
                        train={"steps": 4, "seq_len": 32, "lr": 1e-2, "eval_blocks": 4},
                        federation={"rounds": 1, "min_clients": 2})
    history = simulate(setup, _owners(rt_composition, rt_experts, tiny_base_dir, tiny_corpora, DOMAINS[:2]),
                       cpus_per_client=1, total_cpus=1)
    assert history["aggregated_rounds"] == 1
    rt = load_runtime(history["output"]["composition"], rt_experts, str(tiny_base_dir))
    assert rt.spec.router_type == "mot"
    out = rt.generate(["def main(argv): return"], max_new_tokens=4)
    assert sum(out[0].trace["gate_mass"].values()) == pytest.approx(1.0)
    rt.close()


@pytest.mark.slow                     # two Flower simulations (~40 s idle); CI runs it in its slow step
def test_server_lr_scales_the_mean_update(tmp_path, rt_composition, rt_experts, tiny_base_dir, tiny_corpora):
    """server_lr s: new rows = old + s * (FedAvg mean - old); one round each, the owners' updates are the same."""
    from router_training.kinds import load_runtime

    def rows_after(tag: str, **fed):
        h = _run(tmp_path / tag, rt_composition, rt_experts, tiny_base_dir,
                 _owners(rt_composition, rt_experts, tiny_base_dir, tiny_corpora), rounds=1, **fed)
        rt = load_runtime(h["output"]["composition"], rt_experts, str(tiny_base_dir))
        rows = rt.model.router.expert_rows.detach().clone()
        rt.close()
        return rows, h

    rt = load_runtime(rt_composition, rt_experts, str(tiny_base_dir))
    old = rt.model.router.expert_rows.detach().clone()
    rt.close()
    fedavg, _ = rows_after("fedavg")
    doubled, history = rows_after("doubled", server_lr=2.0)
    assert history["setup"]["federation"]["server_lr"] == 2.0
    assert (fedavg - old).abs().max() > 1e-4                      # the round moved the rows
    assert (doubled - old).sub(2 * (fedavg - old)).abs().max() < 1e-4


def test_owner_node_config_needs_data():
    with pytest.raises(ExpertMeshError, match="node config lacks data"):
        OwnerSetup.from_node_config({"composition": "c"})
    o = OwnerSetup.from_node_config({"composition": "c", "experts": "e", "data": "d", "local-dp-epsilon": 4.0})
    assert o.local_dp == {"epsilon": 4.0, "clipping_norm": 1.0}
