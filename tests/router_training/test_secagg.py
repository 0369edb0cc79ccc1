"""SecAgg+ (Flower's secaggplus_mod + SecAggPlusWorkflow) in the simulation engine: the coordinator's aggregate
equals plain FedAvg of the owners' updates within the quantisation step, and a dropped owner is tolerated."""
from __future__ import annotations

import numpy as np
import pytest

from expertmesh.errors import ConfigError
from router_training.secagg import SecAggConfig, fedavg, run_secure

INITIAL = {"rows": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 12),
           "bias": np.zeros(3, dtype=np.float32)}


def owner_update(pid: int, arrays: dict, server_round: int):
    """Deterministic stand-in for local training: a different step per owner and round, weight 10*(pid+1)."""
    rng = np.random.default_rng(100 * server_round + pid)
    return {k: arrays[k] + 0.1 * rng.standard_normal(arrays[k].shape).astype(np.float32)
            for k in sorted(arrays)}, 10 * (pid + 1)


def dropping_update(pid: int, arrays: dict, server_round: int):
    if pid == 3:
        raise RuntimeError("owner 3 went offline")
    return owner_update(pid, arrays, server_round)


def test_secure_aggregate_equals_plain_fedavg_within_the_quantisation_step():
    cfg = SecAggConfig(max_weight=40)   # weights are 10..40
    stats = run_secure(INITIAL, owner_update, num_owners=3, num_rounds=2, cfg=cfg)
    assert [s.round for s in stats] == [1, 2] and all(s.failures == 0 for s in stats)
    arrays = INITIAL
    for st in stats:
        want = fedavg([owner_update(pid, arrays, st.round) for pid in range(3)])
        for k in INITIAL:
            np.testing.assert_allclose(st.aggregate[k], want[k], rtol=0, atol=cfg.tolerance([10, 20, 30]))
        arrays = {k: v.astype(np.float32) for k, v in st.aggregate.items()}
    assert stats[0].bytes_up > 0 and stats[0].messages >= 4 * 3     # four protocol stages, three owners


def test_a_dropped_owner_is_tolerated_and_left_out_of_the_average():
    # Every owner is sampled (the round waits until all 4 are known): it once sampled 3 when the 4th node
    # registered late under load, and then the drop left FedAvg over 2 owners (see secagg._recording_fedavg).
    cfg = SecAggConfig(max_weight=40)   # weights are 10..40
    [st] = run_secure(INITIAL, dropping_update, num_owners=4, num_rounds=1, cfg=cfg, min_clients=3)
    assert st.failures >= 1     # Flower lists the dropped owner's error reply once per loop over the replies
    assert st.results == 3 and st.replies == 4 + 4 + 4 + 3    # setup, share keys, masked vectors (3 + 1 error), unmask
    want = fedavg([owner_update(pid, INITIAL, 1) for pid in range(3)])
    for k in INITIAL:
        np.testing.assert_allclose(st.aggregate[k], want[k], rtol=0, atol=cfg.tolerance([10, 20, 30]))


@pytest.mark.slow
def test_a_round_with_fewer_than_min_clients_results_does_not_aggregate():
    [st] = run_secure(INITIAL, dropping_update, num_owners=4, num_rounds=1, cfg=SecAggConfig(max_weight=40),
                      min_clients=4)
    assert st.results == 3 and st.aggregate == {}


def test_fewer_than_three_owners_are_refused():
    with pytest.raises(ConfigError, match="at least 3 owners"):
        run_secure(INITIAL, owner_update, num_owners=2)
    with pytest.raises(ConfigError, match="reconstruction_threshold"):
        SecAggConfig(reconstruction_threshold=0)


# --- `expertmesh federate tune --secure-aggregation` -------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--dp", "central"], "does not run with DP"),
    (["--dp", "local"], "does not run with DP"),
    (["--central"], "drop --central or --secure-aggregation"),
    (["--fraction", "0.5"], "samples every owner each round"),
    (["--server-lr", "3"], "runs plain FedAvg (server_lr 1.0)"),
    (["--secagg-threshold", "0"], "reconstruction_threshold"),
])
def test_secure_aggregation_refuses_what_it_cannot_combine_with(tmp_path, extra, message):
    from click.testing import CliRunner

    from cli.main import cli

    args = ["federate", "tune", "--composition", str(tmp_path), "--experts", str(tmp_path), "--out",
            str(tmp_path / "run"), "--clients", "a,b,c", "--secure-aggregation", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "run").exists()            # refused before anything ran


def test_secure_aggregation_needs_three_owners(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(cli, ["federate", "tune", "--composition", str(tmp_path), "--experts", str(tmp_path),
                                      "--out", str(tmp_path / "run"), "--clients", "a,b", "--secure-aggregation"])
    assert result.exit_code == 1 and "at least 3 owners (got 2)" in result.output, result.output


def test_federate_tune_with_secure_aggregation_writes_a_tuned_composition_that_says_so(rt_composition, rt_experts,
                                                                                        tiny_corpora, tmp_path):
    """The CLI runs router tuning through tune_secure (one Flower simulation, shared with the API's checks)."""
    import json

    from click.testing import CliRunner

    from cli.main import cli
    from expertmesh.compose.spec import read_spec

    clients = ",".join(str(tiny_corpora[d]) for d in ("medicine", "law", "code"))
    result = CliRunner().invoke(cli, ["federate", "tune", "--composition", str(rt_composition), "--experts",
                                      str(rt_experts), "--clients", clients, "--rounds", "1", "--steps", "2",
                                      "--seq-len", "32", "--min-clients", "3", "--secure-aggregation",
                                      "--secagg-threshold", "0.6", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "round 1: secagg+" in result.output and "3 owners in the sum, 0 failures" in result.output
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["aggregated_rounds"] == 1 and history["rounds"][0]["failures"] == 0
    assert history["rounds"][0]["bytes_up"] > 0
    spec = read_spec(tmp_path / "run" / "composition")
    assert spec.router_type == "tuned" and spec.name == "tiny-tuned"
    assert (tmp_path / "run" / "router_arrays.safetensors").is_file()
    config = spec.provenance["secure_aggregation_config"]
    assert spec.provenance["secure_aggregation"] is True and config["protocol"] == "secagg+"
    assert config["reconstruction_threshold"] == 0.6 and config["timeout"] == 900.0
    assert config["max_weight"] == 2 * 4 * 32 == history["secure_aggregation"]["max_weight"]   # tokens/owner/round
