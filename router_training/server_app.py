"""Flower ServerApp: the coordinator. FedAvg over the owners' router (or MoT) updates, then a new composition.

Each round: sample owners (``fraction``, at least ``min_clients``; waits for ``min_available`` to connect),
send the current arrays with {kind, train config, composition digest, DP settings}, wait at most
``round_timeout`` s, aggregate the replies that came back. Owners that fail, time out or hold another
composition version (error reply "composition_mismatch: ...") are left out of that round and recorded; a round
with fewer than ``min_clients`` good replies keeps the previous arrays. If no round could aggregate, the run
fails with the owners' reasons (CompositionMismatchError when every failure was a version mismatch).

Output in ``ServerSetup.out`` (the run directory):
    composition/        the new composition package (router type ``tuned`` or ``mot``), ready for
                        CompositionRuntime.load / `expertmesh compose generate` / registry publish
    history.json        resolved config, per-round train/eval metrics per owner, failures, timing
and, with ``registry`` set, the composition is published there (RegistryClient.publish_composition).

Deployment entry point: ``router_training.server_app:app`` reads its settings from the run config
(router_training/pyproject.toml [tool.flwr.app.config], overridable with ``flwr run --run-config``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.supercore import log

from expertmesh.errors import ConfigError, ExpertMeshError
from expertmesh.fileio import write_json_atomic
from router_training import dp as dp_lib
from router_training.config import FederationConfig
from router_training.kinds import CompositionMismatchError, get_kind, load_for_kind

MISMATCH_PREFIX = "composition_mismatch:"


@dataclass
class ServerSetup:
    composition: str | None              # the composition to tune (None for kind "lora")
    experts: str | None                  # its member packages (dir of packages)
    out: str                             # run directory
    base: str | None = None
    kind: str = "router"                 # router | mot
    kind_options: dict = field(default_factory=dict)   # mot: the MoT architecture (MoTConfig fields)
    train: dict = field(default_factory=dict)          # TuneConfig / MoTTrainConfig fields
    federation: FederationConfig = field(default_factory=FederationConfig)
    name: str | None = None              # output composition name (default: <input>-tuned / <input>-mot)
    seed: int = 0
    registry: str | None = None          # registry URL to publish the result to (token from env/login)

    def __post_init__(self) -> None:
        if isinstance(self.federation, dict):
            self.federation = FederationConfig.from_dict(self.federation)
        get_kind(self.kind)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_run_config(cls, rc) -> "ServerSetup":
        """Flat run-config keys (what `flwr run --run-config` can set) -> ServerSetup."""
        fed = FederationConfig(rounds=int(rc.get("rounds", 3)), fraction=float(rc.get("fraction", 1.0)),
                               min_clients=int(rc.get("min-clients", 2)),
                               min_available=int(rc.get("min-available", 2)),
                               round_timeout=float(rc.get("round-timeout", 900.0)),
                               server_lr=float(rc.get("server-lr", 1.0)),
                               dp={"mode": str(rc.get("dp-mode", "none")),
                                   "clipping_norm": float(rc.get("dp-clip", 1.0)),
                                   "noise_multiplier": float(rc.get("dp-noise", 0.5)),
                                   "epsilon": float(rc.get("dp-epsilon", 10.0))})
        kind = str(rc.get("kind", "router"))
        need = ["out"] + (["composition", "experts"] if get_kind(kind).needs_composition else [])
        if any(not rc.get(k) for k in need):
            raise ConfigError(f"run config needs {need} (flwr run --run-config "
                              "'composition=\"DIR\" experts=\"DIR\" out=\"DIR\"')")
        return cls(composition=str(rc["composition"]) if rc.get("composition") else None,
                   experts=str(rc["experts"]) if rc.get("experts") else None, out=str(rc["out"]),
                   base=str(rc["base"]) if rc.get("base") else None, kind=kind,
                   kind_options=json.loads(str(rc.get("kind-options", "{}"))),
                   train=json.loads(str(rc.get("train-config", "{}"))), federation=fed,
                   name=str(rc["name"]) if rc.get("name") else None, seed=int(rc.get("seed", 0)),
                   registry=str(rc["registry"]) if rc.get("registry") else None)


class RoundRecorder(Strategy):
    """Wraps a strategy: records every reply per owner, enforces ``min_clients`` good replies per round."""

    def __init__(self, inner: Strategy, min_clients: int):
        self.inner, self.min_clients = inner, min_clients
        self.rounds: dict[int, dict] = {}
        self.aggregated = 0

    def summary(self) -> None:
        self.inner.summary()

    def _rec(self, rnd: int) -> dict:
        return self.rounds.setdefault(rnd, {"round": rnd, "train": {}, "eval": {}, "failures": [],
                                            "aggregated": False})

    @staticmethod
    def _owner(msg) -> str:
        rec = msg.content.config_records.get("owner") if msg.has_content() else None
        return str(rec["owner"]) if rec is not None else f"node-{msg.metadata.src_node_id}"

    def _record(self, rnd: int, replies: list, what: str) -> list:
        rec = self._rec(rnd)
        ok = []
        for m in replies:
            if m.has_error():
                rec["failures"].append({"phase": what, "node": int(m.metadata.src_node_id),
                                        "reason": clean_reason(m.error.reason)})
            else:
                ok.append(m)
                metrics = next(iter(m.content.metric_records.values()))
                rec[what][self._owner(m)] = {k: v for k, v in metrics.items()}
        return ok

    def configure_train(self, server_round, arrays, config, grid):
        msgs = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._rec(server_round)["sampled"] = len(msgs)
        return msgs

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        ok = self._record(server_round, replies, "train")
        if len(ok) < self.min_clients:
            log(logging.WARNING, "round %s: %s good replies < min_clients=%s; keeping the previous arrays",
                server_round, len(ok), self.min_clients)
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            self.aggregated += 1
            self._rec(server_round)["aggregated"] = True
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        self._record(server_round, replies, "eval")
        return self.inner.aggregate_evaluate(server_round, replies)

    def failure_error(self) -> ExpertMeshError:
        reasons = [f["reason"] for r in self.rounds.values() for f in r["failures"]]
        mism = [r for r in reasons if MISMATCH_PREFIX in r]
        if reasons and len(mism) == len(reasons):
            msg = mism[0][mism[0].index(MISMATCH_PREFIX) + len(MISMATCH_PREFIX):].strip().rstrip("'>")
            return CompositionMismatchError(f"no round could aggregate: every owner rejected the composition; {msg}",
                                            detail={"reasons": reasons})
        return ExpertMeshError(f"no round could aggregate ({len(reasons)} owner failures); first: "
                               f"{reasons[0] if reasons else 'no replies'}", detail={"reasons": reasons})


def clean_reason(reason: str) -> str:
    """The owner's own message out of Flower/Ray's wrapping ("...Message: <text>'>", ANSI colours)."""
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    if "Message: " in reason:
        reason = reason[reason.rindex("Message: ") + len("Message: "):]
    return reason.strip().removesuffix("'>").strip()


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    t0 = time.time()
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.time() - t0 > timeout:
            raise ExpertMeshError(f"only {len(nodes)} owners connected after {timeout:.0f} s; min_available={n}")
        time.sleep(1.0)
    return nodes


def run_server(grid: Grid, setup: ServerSetup) -> dict:
    """The coordinator's whole run (plain function; the ServerApp's main calls it)."""
    t0 = time.time()
    fed, kind = setup.federation, get_kind(setup.kind)
    loaded = load_for_kind(kind, setup.composition, setup.experts, setup.base, setup.kind_options)
    model, digest = loaded.model, loaded.version
    nodes = _wait_for_nodes(grid, fed.min_available, fed.round_timeout)
    sampled = max(int(len(nodes) * fed.fraction), fed.min_clients)
    # FedAvgM with no momentum is FedAvg followed by a server step of server_lr on the mean update (1 = FedAvg)
    inner = FedAvgM(fraction_train=fed.fraction, fraction_evaluate=fed.fraction, min_train_nodes=fed.min_clients,
                    min_evaluate_nodes=fed.min_clients, min_available_nodes=fed.min_available,
                    server_learning_rate=fed.server_lr)
    strategy = RoundRecorder(dp_lib.wrap_strategy(inner, fed.dp, sampled), fed.min_clients)
    common = {"kind": setup.kind, "kind-options": json.dumps(setup.kind_options),
              "train-config": json.dumps(setup.train), "composition-digest": digest, "seed": setup.seed}
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(kind.arrays(model)), num_rounds=fed.rounds,
                            timeout=fed.round_timeout, train_config=ConfigRecord({**common, **dp_lib.announce(fed.dp)}),
                            evaluate_config=ConfigRecord(common))
    if strategy.aggregated == 0:
        loaded.close()
        raise strategy.failure_error()
    kind.set_arrays(model, result.arrays.to_torch_state_dict())
    source = loaded.runtime.spec.name if loaded.runtime is not None else "fedavg"
    name = setup.name or f"{source}-{'tuned' if setup.kind == 'router' else setup.kind}"[:64]
    history = {"setup": setup.to_dict(), "composition_digest": digest, "nodes": len(nodes), "sampled": sampled,
               "rounds": [strategy.rounds[r] for r in sorted(strategy.rounds)],
               "aggregated_rounds": strategy.aggregated, "seconds": round(time.time() - t0, 1)}
    if fed.dp.mode == "central":
        history["dp_noise_std"] = dp_lib.central_noise_std(fed.dp.clipping_norm, fed.dp.noise_multiplier, sampled)
    elif fed.dp.mode == "local":
        history["dp_noise_std"] = dp_lib.local_noise_std(fed.dp.clipping_norm, fed.dp.epsilon, fed.dp.delta)
    history["output"] = kind.save(model, loaded, setup.experts, setup.out, name,
                                  {"federation": fed.to_dict(), "train": setup.train,
                                   "kind_options": setup.kind_options, "aggregated_rounds": strategy.aggregated})
    if setup.registry:
        publish_output(setup.registry, history["output"])
    write_json_atomic(Path(setup.out) / "history.json", history)
    loaded.close()
    return history


def publish_output(registry: str, output: dict) -> None:
    """Publish a run's composition (or expert package) to ``registry``; records the answer in ``output``."""
    from clients.registry_client import RegistryClient

    with RegistryClient.from_config(registry) as reg:
        if "composition" in output:
            output["published"] = str(reg.publish_composition(output["composition"]))
        else:
            output["published"] = str(reg.publish(output["expert"]))


def make_server_app(setup: ServerSetup | None = None) -> ServerApp:
    """ServerApp over ``setup`` (simulation, CLI) or, when None, over the run config (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, setup or ServerSetup.from_run_config(context.run_config))

    return app


app = make_server_app()
