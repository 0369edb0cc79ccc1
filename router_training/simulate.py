"""Run a federation in Flower's simulation engine (one process tree, no daemons, no ports).

    from router_training.simulate import simulate
    history = simulate(ServerSetup(composition="comp", experts="experts", out="runs/tune"),
                       [OwnerSetup("comp", "experts", "corpora/law"), OwnerSetup("comp", "experts", "corpora/code")])

Every simulated SuperNode is one owner (partition-id i -> owners[i]); ClientApps run in Ray actors, each with
``cpus_per_client`` cores (torch uses that many threads). ``total_cpus`` caps what Ray may use on this machine.
One actor with all the cores is fastest on a small machine (measured on 2 cores, tiny model, 3 owners x 3 rounds:
17 s with one 1-core actor vs 24 s with two), and it holds one copy of the base: owners then train in turn.
The ServerApp's exceptions (e.g. CompositionMismatchError when no round could aggregate) are re-raised here.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from router_training.client_app import OwnerSetup, make_client_app
from router_training.server_app import ServerSetup, make_server_app

for _k, _v in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}.items():
    os.environ.setdefault(_k, _v)


def simulate(setup: ServerSetup, owners: list[OwnerSetup], *, cpus_per_client: int = 2, total_cpus: int = 2,
             quiet: bool = True) -> dict:
    """Run the coordinator against ``owners`` and return its history (also in <setup.out>/history.json)."""
    from flwr.simulation import run_simulation

    if not owners:
        raise ValueError("a federation needs at least one owner")
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    if quiet:
        flwr_log.setLevel(logging.WARNING)
    try:
        run_simulation(server_app=make_server_app(setup), client_app=make_client_app(owners),
                       num_supernodes=len(owners),
                       backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": total_cpus, "object_store_memory": 100 * 1024 ** 2,
                                                     "include_dashboard": False}})
    finally:
        flwr_log.setLevel(level)
    return json.loads((Path(setup.out) / "history.json").read_text())
