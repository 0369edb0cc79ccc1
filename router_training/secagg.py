"""Secure aggregation for federated tuning with Flower's SecAgg+ (flwr 1.42), so the coordinator only ever sees
the weighted sum of the owners' updates, never one owner's.

Flower ships SecAgg+ as a legacy-API pair: the server workflow ``flwr.server.workflow.SecAggPlusWorkflow`` (inside
``DefaultWorkflow`` with a ``LegacyContext`` and a legacy ``FedAvg``) and the client mod
``flwr.client.mod.secaggplus_mod`` around a ``NumPyClient``. Per round: setup (public keys), share keys (Shamir
shares of each owner's secrets to its neighbours), collect masked vectors (each owner uploads
``q(w/max_weight * params)`` plus pairwise and private masks, mod 2**32), unmask (the server rebuilds the masks of
owners that answered and the pairwise masks of owners that dropped, from >= threshold shares).

What the quantisation costs: each owner's weighted value ``w/max_weight * x`` is clipped to
``[-clipping_range, clipping_range]`` and quantised to ``quantization_range`` levels (one step is
16 / 2**22 = 3.8e-6 at the defaults); the server divides the sum by ``sum(w)/max_weight``, so the average is off by
about ``n * step * max_weight / sum(w)`` (``SecAggConfig.tolerance``). Set ``max_weight`` to the largest weight an
owner really reports, and keep updates (router rows, LoRA factors) well inside the clipping range.

The owner's side is a plain function ``update(partition_id, arrays, server_round) -> (arrays, num_examples)``;
``router_update`` builds it from the router_training ClientApp's OwnerSetup (the same load/train code as the
plain federation). ``run_secure`` runs rounds in Flower's simulation engine and returns each round's aggregate,
time and payload bytes; ``secure=False`` runs the same apps with Flower's plain FedAvg for comparison.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from expertmesh.errors import ConfigError
from expertmesh.validate import check_float, check_int

Update = Callable[[int, dict[str, np.ndarray], int], tuple[dict[str, np.ndarray], int]]


@dataclass
class SecAggConfig:
    num_shares: float = 1.0              # share of sampled owners each owner's secrets are split among
    reconstruction_threshold: float = 0.5   # share of num_shares needed to rebuild a secret (dropout tolerance)
    clipping_range: float = 8.0
    quantization_range: int = 2 ** 22
    max_weight: float = 1000.0           # largest num_examples an owner reports; see tolerance()
    timeout: float | None = None

    def __post_init__(self) -> None:
        check_float("num_shares", self.num_shares, lo=0.0, lo_open=True, hi=1.0)
        check_float("reconstruction_threshold", self.reconstruction_threshold, lo=0.0, lo_open=True, hi=1.0)
        check_float("clipping_range", self.clipping_range, lo=0.0, lo_open=True)
        check_int("quantization_range", self.quantization_range, lo=2, hi=2 ** 30)
        check_float("max_weight", self.max_weight, lo=0.0, lo_open=True)

    @property
    def step(self) -> float:
        """One quantisation step: the per-value error of one owner's contribution."""
        return 2 * self.clipping_range / self.quantization_range

    def tolerance(self, weights: list[float]) -> float:
        """Bound on |secure aggregate - FedAvg| per value. Owner i uploads q(w_i/max_weight * x_i): the rounding
        (<= one step each) is divided by sum(w_i)/max_weight when the server normalises, so a max_weight far above
        the real weights costs precision (with weights 10..30 and max_weight 1e6 the grid is 1/63, not 4e-6)."""
        return 2 * len(weights) * self.step * self.max_weight / sum(weights)


@dataclass
class RoundStats:
    round: int
    seconds: float = 0.0
    bytes_down: int = 0                  # server -> owners payload
    bytes_up: int = 0                    # owners -> server payload
    messages: int = 0
    replies: int = 0
    failures: int = 0                    # error replies as Flower lists them (the fit stage's, twice)
    results: int = 0                     # owners whose update is in the aggregate
    aggregate: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def payload_bytes(content) -> int:
    """Bytes a RecordDict carries: array data, bytes/str config values (8 per number); framing not counted."""
    n = 0
    for rec in content.array_records.values():
        n += sum(len(a.data) for a in rec.values())
    for rec in list(content.config_records.values()) + list(content.metric_records.values()):
        for v in rec.values():
            for x in (v if isinstance(v, list) else [v]):
                n += len(x) if isinstance(x, (bytes, str)) else 8
    return n


class MeteredGrid:
    """A Grid that counts payload bytes per round (the workflow only calls send_and_receive to exchange)."""

    def __init__(self, grid, rounds: dict[int, RoundStats], current: Callable[[], int]):
        self._grid, self._rounds, self._current = grid, rounds, current

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        st = self._rounds.setdefault(self._current(), RoundStats(self._current()))
        st.messages += len(messages)
        st.bytes_down += sum(payload_bytes(m.content) for m in messages)
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        st.replies += len(replies)
        st.bytes_up += sum(payload_bytes(r.content) for r in replies if r.has_content())
        return replies


def _recording_fedavg(names: list[str], initial: dict[str, np.ndarray], num_owners: int, min_clients: int,
                      rounds: dict[int, RoundStats], state: dict):
    """Legacy FedAvg that samples every one of ``num_owners`` and aggregates only with >= ``min_clients`` results.

    Why both: the legacy client manager learns the simulation's nodes by polling while they register, and
    FedAvg samples ``max(int(available * fraction), min_fit_clients)`` as soon as ``min_available_clients`` are
    known. With both set to ``min_clients`` (3 of 4 owners), a round that started before the 4th node was seen
    sampled only 3, so one dropped owner left 2 in the sum (seen under load: 11 replies instead of 15, the
    aggregate FedAvg over two owners). Waiting for and sampling all owners makes the round's membership fixed;
    ``min_clients`` then means what it means in the plain federation: the fewest good replies that aggregate.
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    class RecordingFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            state["round"], state["t0"] = server_round, time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            st = rounds.setdefault(server_round, RoundStats(server_round))
            st.seconds = round(time.perf_counter() - state["t0"], 3)
            st.failures = len(failures)
            st.results = len(results)
            if len(results) < min_clients:      # too few owners answered: the round does not move the model
                return None, {}
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is not None:
                st.aggregate = dict(zip(names, parameters_to_ndarrays(params)))
            return params, metrics

    return RecordingFedAvg(initial_parameters=ndarrays_to_parameters([initial[k] for k in names]),
                           fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=num_owners,
                           min_evaluate_clients=0, min_available_clients=num_owners,
                           accept_failures=True, on_fit_config_fn=lambda r: {"server_round": r})


def make_server_app(initial: dict[str, np.ndarray], num_rounds: int, num_owners: int, min_clients: int,
                    cfg: SecAggConfig | None, rounds: dict[int, RoundStats]):
    """ServerApp: FedAvg over ``initial``'s arrays; SecAgg+ when ``cfg`` is given, Flower's plain fit otherwise."""
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    names = sorted(initial)
    state = {"round": 0, "t0": time.perf_counter()}
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        strategy = _recording_fedavg(names, initial, num_owners, min_clients, rounds, state)
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
        fit = None if cfg is None else SecAggPlusWorkflow(
            num_shares=cfg.num_shares, reconstruction_threshold=cfg.reconstruction_threshold,
            max_weight=cfg.max_weight, clipping_range=cfg.clipping_range,
            quantization_range=cfg.quantization_range, timeout=cfg.timeout)
        DefaultWorkflow(fit_workflow=fit)(MeteredGrid(grid, rounds, lambda: state["round"]), ctx)

    return app


def make_client_app(names: list[str], update: Update, *, secure: bool):
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    class Owner(NumPyClient):
        def __init__(self, pid: int):
            self.pid = pid

        def fit(self, parameters, config):
            arrays = dict(zip(names, parameters))
            new, n = update(self.pid, arrays, int(config.get("server_round", 0)))
            return [np.asarray(new[k], dtype=np.float32) for k in names], int(n), {}

    def client_fn(context):
        return Owner(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


def run_secure(initial: dict[str, np.ndarray], update: Update, *, num_owners: int, num_rounds: int = 1,
               cfg: SecAggConfig | None = None, secure: bool = True, min_clients: int | None = None,
               total_cpus: int = 2) -> list[RoundStats]:
    """Run ``num_rounds`` of (secure) FedAvg over ``num_owners`` simulated owners; per-round stats + aggregates."""
    import logging

    from flwr.simulation import run_simulation

    if num_owners < 3 and secure:
        raise ConfigError(f"SecAgg+ needs at least 3 owners (got {num_owners}): with 2, each learns the other's "
                          "update from the sum")
    cfg = cfg or SecAggConfig()
    rounds: dict[int, RoundStats] = {}
    names = sorted(initial)
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    try:
        run_simulation(server_app=make_server_app(initial, num_rounds, num_owners, min_clients or num_owners,
                                                  cfg if secure else None, rounds),
                       client_app=make_client_app(names, update, secure=secure), num_supernodes=num_owners,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": total_cpus, "object_store_memory": 100 * 1024 ** 2,
                                                     "include_dashboard": False}})
    finally:
        flwr_log.setLevel(level)
    return [rounds[r] for r in sorted(rounds) if r > 0]


def fedavg(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Plain weighted FedAvg, the reference the secure aggregate is checked against."""
    total = sum(n for _, n in updates)
    return {k: sum(a[k].astype(np.float64) * n for a, n in updates) / total for k in updates[0][0]}


def router_update(owners: list, kind_name: str, train_cfg: dict, digest: str, options: dict | None = None,
                  seed: int = 0) -> Update:
    """The router_training owners' local step as an ``Update``: same loading, blocks and training as the plain
    ClientApp (router_training/client_app.py), weighted by the tokens trained."""
    import torch

    from router_training import client_app as ca

    def update(pid: int, arrays: dict[str, np.ndarray], server_round: int):
        owner = owners[pid % len(owners)]
        kind, loaded = ca._loaded_for(owner, kind_name, options or {}, digest)
        kind.set_arrays(loaded.model, {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        blocks = ca._blocks(owner, loaded.base.tokenizer, kind.seq_len(train_cfg), "train")
        stats = kind.train(loaded.model, blocks, train_cfg, seed * 1_000_003 + server_round * 101 + pid)
        return {k: v.detach().float().numpy() for k, v in kind.arrays(loaded.model).items()}, int(stats["tokens"])

    return update


def tuning_config(setup, **fields) -> SecAggConfig:
    """The SecAgg+ settings for tuning ``setup`` (a ServerSetup): ``max_weight`` is the tokens one owner trains per
    round (its FedAvg weight: steps * batch_size * seq_len, e.g. 8 * 4 * 128 = 4,096), the tightest safe value;
    ``fields`` override any SecAggConfig field."""
    from router_training.kinds import get_kind

    t = setup.train
    max_weight = float(t.get("steps", 8) * t.get("batch_size", 4) * get_kind(setup.kind).seq_len(t))
    return SecAggConfig(**{"max_weight": max_weight, **fields})


def check_secure_federation(num_owners: int, federation) -> None:
    """What SecAgg+ tuning (``tune_secure``) cannot combine with, refused before any model is loaded."""
    if num_owners < 3:
        raise ConfigError(f"secure aggregation needs at least 3 owners (got {num_owners}): with 2, each learns the "
                          "other's update from the sum")
    if federation.dp.mode != "none":
        raise ConfigError(f"secure aggregation does not run with DP (dp mode {federation.dp.mode!r}): tune_secure "
                          "adds no clipping or noise; drop one of the two")
    if federation.server_lr != 1.0:
        raise ConfigError(f"secure aggregation runs plain FedAvg (server_lr 1.0), got server_lr="
                          f"{federation.server_lr}; drop --server-lr or --secure-aggregation")
    if federation.fraction != 1.0:
        raise ConfigError(f"secure aggregation samples every owner each round (fraction 1.0), got "
                          f"fraction={federation.fraction}")
    if not 2 <= federation.min_clients <= num_owners:
        raise ConfigError(f"secure aggregation needs 2 <= min_clients <= {num_owners} owners (got "
                          f"{federation.min_clients}): one owner's sum is its update, and more than all never comes")


def tune_secure(setup, owners: list, cfg: SecAggConfig | None = None, *, total_cpus: int = 2) -> dict:
    """Federated router (or MoT) tuning where the coordinator sees only SecAgg+ sums; same inputs and outputs as
    ``simulate(setup, owners)`` (a composition under ``setup.out`` and history.json, published to
    ``setup.registry`` when set), plus per-round time and bytes. The composition's provenance records
    ``secure_aggregation: true`` and the SecAgg+ settings under ``secure_aggregation_config``.

    ``cfg`` defaults to ``tuning_config(setup)``.
    """
    import dataclasses
    import json
    from pathlib import Path

    import torch

    from expertmesh.errors import ExpertMeshError
    from expertmesh.fileio import write_json_atomic
    from router_training.kinds import get_kind, load_for_kind

    check_secure_federation(len(owners), setup.federation)
    kind = get_kind(setup.kind)
    cfg = cfg or tuning_config(setup)
    loaded = load_for_kind(kind, setup.composition, setup.experts, setup.base, setup.kind_options)
    try:
        initial = {k: v.detach().float().numpy() for k, v in kind.arrays(loaded.model).items()}
        update = router_update(owners, setup.kind, setup.train, loaded.version, setup.kind_options, setup.seed)
        stats = run_secure(initial, update, num_owners=len(owners), num_rounds=setup.federation.rounds, cfg=cfg,
                           min_clients=setup.federation.min_clients, total_cpus=total_cpus)
        done = [s for s in stats if s.aggregate]
        if not done:
            raise ExpertMeshError(f"no SecAgg+ round could aggregate ({sum(s.failures for s in stats)} failures)")
        kind.set_arrays(loaded.model, {k: torch.from_numpy(np.asarray(v, dtype=np.float32))
                                       for k, v in done[-1].aggregate.items()})
        source = loaded.runtime.spec.name if loaded.runtime is not None else "fedavg"
        name = setup.name or f"{source}-tuned"[:64]
        output = kind.save(loaded.model, loaded, setup.experts, setup.out, name,
                           {"federation": setup.federation.to_dict(), "train": setup.train,
                            "secure_aggregation": True,
                            "secure_aggregation_config": {"protocol": "secagg+", **dataclasses.asdict(cfg)},
                            "aggregated_rounds": len(done)})
    finally:
        loaded.close()
    history = {"setup": setup.to_dict(), "secure_aggregation": dataclasses.asdict(cfg), "owners": len(owners),
               "rounds": [{k: v for k, v in dataclasses.asdict(s).items() if k != "aggregate"} for s in stats],
               "aggregated_rounds": len(done), "output": output}
    if setup.registry:
        from router_training.server_app import publish_output

        publish_output(setup.registry, output)
    write_json_atomic(Path(setup.out) / "history.json", json.loads(json.dumps(history, default=str)))
    return history
