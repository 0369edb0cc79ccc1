"""``expertmesh federate``: coordinator training across owners with Flower (router tuning, MoT, FedAvg LoRA).

These commands run the federation in Flower's simulation engine on this machine (each --clients entry is one
owner's corpus, trained in its own Ray actor). For owners on separate machines use SuperLink + SuperNodes
(router_training/README.md); the ServerApp/ClientApp are the same code.
"""
from __future__ import annotations

import dataclasses
import functools
import json

import click


@dataclasses.dataclass(frozen=True)
class Federation:
    """The options every federate command shares (fed_options), in one form from the command line to the run."""

    clients: str
    rounds: int
    min_clients: int
    fraction: float
    round_timeout: float
    server_lr: float
    dp: str
    dp_clip: float
    dp_noise: float
    dp_epsilon: float
    cpus: int

    def owners(self, composition, experts, base) -> list:
        from router_training.client_app import OwnerSetup

        paths = [c.strip() for c in self.clients.split(",") if c.strip()]
        if not paths:
            raise click.BadParameter("give at least one owner corpus", param_hint="--clients")
        return [OwnerSetup(composition=composition, experts=experts, data=p, base=base) for p in paths]

    def server_config(self, n_owners: int) -> dict:
        """ServerSetup's federation section (validated there as a FederationConfig)."""
        return {"rounds": self.rounds, "min_clients": min(self.min_clients, n_owners), "min_available": n_owners,
                "fraction": self.fraction, "round_timeout": self.round_timeout, "server_lr": self.server_lr,
                "dp": {"mode": self.dp, "clipping_norm": self.dp_clip, "noise_multiplier": self.dp_noise,
                       "epsilon": self.dp_epsilon}}


def _report(history: dict) -> None:
    for r in history.get("rounds", []):
        ev = {k: round(v.get("eval-loss", float("nan")), 4) for k, v in r.get("eval", {}).items()}
        fails = [f["reason"][:100] for f in r.get("failures", [])]
        click.echo(f"round {r['round']}: aggregated={r['aggregated']} eval-loss={ev}" + (f" failures={fails}" if fails else ""))
    click.echo(f"wrote {json.dumps(history['output'])}")


_fed_options = [
    click.option("--clients", required=True, help="Comma-separated owner corpora (one simulated owner each)."),
    click.option("--rounds", default=3, show_default=True, type=int),
    click.option("--min-clients", default=2, show_default=True, type=int,
                 help="A round aggregates only with at least this many good replies."),
    click.option("--fraction", default=1.0, show_default=True, type=float, help="Owners sampled per round."),
    click.option("--round-timeout", default=900.0, show_default=True, type=float,
                 help="Seconds to wait for replies; silent owners are left out."),
    click.option("--server-lr", default=1.0, show_default=True, type=float,
                 help="Server step on the mean update (FedAvgM, no momentum); 1 = FedAvg. Owners with one domain "
                      "each: try the number of owners."),
    click.option("--dp", default="none", show_default=True, type=click.Choice(["none", "central", "local"]),
                 help="Client-side DP on updates (Flower fixedclipping_mod / LocalDpMod)."),
    click.option("--dp-clip", default=1.0, show_default=True, type=float, help="L2 clipping norm of an update."),
    click.option("--dp-noise", default=0.5, show_default=True, type=float, help="Noise multiplier (central)."),
    click.option("--dp-epsilon", default=10.0, show_default=True, type=float, help="Epsilon per round (local)."),
    click.option("--cpus", default=2, show_default=True, type=int, help="CPU cores Ray may use."),
]


def _stack(opts: list):
    """One decorator applying click options in the order listed (as if written one above the other)."""
    def deco(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def fed_options(command):
    """Adds the shared options and hands them to ``command`` as one ``fed: Federation`` argument."""
    names = [f.name for f in dataclasses.fields(Federation)]

    @functools.wraps(command)
    def with_federation(**kwargs):
        return command(fed=Federation(**{n: kwargs.pop(n) for n in names}), **kwargs)
    return _stack(_fed_options)(with_federation)


def train_options(lr: float):
    """The local-training budget every federate command takes (its own default learning rate)."""
    return _stack([click.option("--steps", default=8, show_default=True, type=int,
                                help="Local steps per owner per round."),
                   click.option("--batch-size", default=4, show_default=True, type=int),
                   click.option("--seq-len", default=128, show_default=True, type=int),
                   click.option("--lr", default=lr, show_default=True, type=float)])


def _report_secure(history: dict) -> None:
    for r in history["rounds"]:
        click.echo(f"round {r['round']}: secagg+ {r['seconds']}s, {r['bytes_up']} bytes up, {r['bytes_down']} bytes "
                   f"down, {r['results']} owners in the sum, {r['failures']} failures")
    click.echo(f"wrote {json.dumps(history['output'])}")


def _run(kind, composition, experts, base, out, name, train, kind_options, central, fed: Federation, registry=None,
         seed=0, secagg=None):
    owners = fed.owners(composition, experts, base)
    if central and secagg is not None:
        from expertmesh.errors import ConfigError

        raise ConfigError("--central pools the corpora at the coordinator, so there is nothing to aggregate "
                          "securely; drop --central or --secure-aggregation")
    if central:
        from router_training.central import train_central

        total = dict(train, steps=train["steps"] * fed.rounds * len(owners))   # the federation's whole step budget
        history = train_central(kind, composition, experts, [o.data for o in owners], total, out=out, base=base,
                                kind_options=kind_options, name=name, seed=seed)
        click.echo(f"central {kind}: {json.dumps(history['stats'])}")
        click.echo(f"wrote {json.dumps(history['output'])}")
        return
    from router_training.server_app import ServerSetup
    from router_training.simulate import simulate

    setup = ServerSetup(composition=composition, experts=experts, out=out, base=base, kind=kind,
                        kind_options=kind_options, train=train, name=name, registry=registry, seed=seed,
                        federation=fed.server_config(len(owners)))
    if secagg is not None:
        from router_training.secagg import tune_secure, tuning_config

        # tune_secure refuses what SecAgg+ cannot combine with (DP, sampling, < 3 owners) before loading a model
        _report_secure(tune_secure(setup, owners, tuning_config(setup, **secagg), total_cpus=fed.cpus))
        return
    # One Ray actor with every core: owners train in turn, one copy of the base in memory (see simulate.py).
    _report(simulate(setup, owners, cpus_per_client=fed.cpus, total_cpus=fed.cpus))


@click.group()
def federate() -> None:
    """Train a composition's router or MoT layers across owners with Flower; raw text never leaves an owner.

    Example: expertmesh federate tune --composition comps/clinic --experts experts --clients corpora/law,corpora/medicine --rounds 3 --out runs/tune
    """


@federate.command("tune")
@click.option("--composition", required=True, type=click.Path(exists=True), help="Composition to tune.")
@click.option("--experts", required=True, type=click.Path(exists=True), help="Directory of its member packages.")
@click.option("--out", required=True, type=click.Path(), help="Run directory (composition/ + history.json).")
@click.option("--base", default=None, help="Base model dir (default: the composition's provenance).")
@click.option("--name", default=None, help="Name of the tuned composition (default <name>-tuned).")
@fed_options
@train_options(lr=1e-2)
@click.option("--no-bias", is_flag=True, help="Tune the rows only, not the per-entry bias.")
@click.option("--central", is_flag=True, help="Pool the corpora and tune centrally (upper bound), same budget.")
@click.option("--registry", default=None, help="Publish the tuned composition to this registry URL.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--secure-aggregation", is_flag=True,
              help="Flower SecAgg+: the coordinator sees only the sum of the owners' updates (needs >= 3 owners, "
                   "every owner each round, no --dp, no --central).")
@click.option("--secagg-threshold", default=0.5, show_default=True, type=float,
              help="SecAgg+ reconstruction threshold: share of an owner's neighbours needed to unmask; lower "
                   "tolerates more dropped owners.")
def tune(composition, experts, out, base, name, fed, steps, batch_size, seq_len, lr, no_bias, central, registry, seed,
         secure_aggregation, secagg_threshold) -> None:
    """Federated router tuning: FedAvg over the rows (and bias) each owner tunes on its own data.

    With --secure-aggregation the same tuning runs under SecAgg+ and the tuned composition's provenance records
    secure_aggregation: true and the protocol settings.

    Example: expertmesh federate tune --composition comps/clinic --experts experts --clients corpora/law,corpora/medicine,corpora/code --rounds 3 --steps 8 --out runs/tune
    """
    train = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "train_bias": not no_bias,
             "seed": seed}
    # a SecAgg+ stage waits at most --round-timeout seconds for the owners' replies, as a plain round does
    secagg = {"reconstruction_threshold": secagg_threshold, "timeout": fed.round_timeout} if secure_aggregation else None
    _run("router", composition, experts, base, out, name, train, {}, central, fed, registry, seed, secagg)


@federate.command("mot-train")
@click.option("--composition", required=True, type=click.Path(exists=True), help="Composition whose experts MoT uses.")
@click.option("--experts", required=True, type=click.Path(exists=True), help="Directory of its member packages.")
@click.option("--out", required=True, type=click.Path(), help="Run directory (composition/ + mot/ + history.json).")
@click.option("--base", default=None)
@click.option("--name", default=None, help="Name of the MoT composition (default <name>-mot).")
@fed_options
@click.option("--top-k", default=2, show_default=True, type=int, help="Active experts per request.")
@click.option("--interaction-layers", default=3, show_default=True, type=int)
@click.option("--latent-dim", default=64, show_default=True, type=int)
@click.option("--heads", default=4, show_default=True, type=int)
@click.option("--select-tokens", default=32, show_default=True, type=int, help="Prompt tokens the selector reads.")
@click.option("--streams", default="gated", show_default=True, type=click.Choice(["gated", "lora"]),
              help="gated: each stream is its expert behind the two-way gate {public, expert} it was trained "
                   "with; lora: each stream is the expert's LoRA alone (the paper's form).")
@train_options(lr=2e-3)
@click.option("--central", is_flag=True, help="Train on the pooled corpora (coordinator may use them), same budget.")
@click.option("--registry", default=None, help="Publish the MoT composition to this registry URL.")
@click.option("--seed", default=0, show_default=True, type=int)
def mot_train(composition, experts, out, base, name, fed, top_k, interaction_layers, latent_dim, heads, select_tokens,
              streams, steps, batch_size, seq_len, lr, central, registry, seed) -> None:
    """Train Mixture-of-Thoughts (selector + interaction layers; experts and base frozen), federated or central.

    Example: expertmesh federate mot-train --composition comps/clinic --experts experts --clients corpora/law,corpora/code --central --steps 10 --out runs/mot
    """
    arch = {"top_k": top_k, "num_interaction": interaction_layers, "latent_dim": latent_dim, "num_heads": heads,
            "select_tokens": select_tokens, "streams": streams}
    train = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed}
    _run("mot", composition, experts, base, out, name, train, arch, central, fed, registry, seed)


@federate.command("fedavg-lora")
@click.option("--out", required=True, type=click.Path(), help="Run directory (expert/ + history.json).")
@click.option("--base", default=None, help="Base model dir or 'smollm2-135m-instruct' (default).")
@click.option("--name", default="fedavg-lora", show_default=True, help="Name of the resulting expert package.")
@fed_options
@click.option("--rank", default=16, show_default=True, type=int)
@click.option("--alpha", default=None, type=float, help="LoRA alpha (default 2 x rank).")
@click.option("--target", "targets", multiple=True, help="LoRA target module (repeatable; default q,k,v,o_proj).")
@train_options(lr=1e-3)
@click.option("--central", is_flag=True, help="Train one LoRA on the pooled corpora instead (same budget).")
@click.option("--registry", default=None, help="Publish the expert package to this registry URL.")
@click.option("--seed", default=0, show_default=True, type=int)
def fedavg_lora(out, base, name, fed, rank, alpha, targets, steps, batch_size, seq_len, lr, central, registry,
                seed) -> None:
    """Baseline: one LoRA trained by plain FedAvg across all owners (FlowerTune-style); writes an expert package.

    Example: expertmesh federate fedavg-lora --clients corpora/law,corpora/medicine,corpora/code --rounds 4 --steps 6 --out runs/fedlora
    """
    lora = {"r": rank, "alpha": alpha if alpha is not None else 2.0 * rank, "dropout": 0.0, "name": name,
            **({"target_modules": list(targets)} if targets else {})}
    train = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed}
    _run("lora", None, None, base, out, name, train, lora, central, fed, registry, seed)


@federate.command("eval")
@click.option("--composition", required=True, type=click.Path(exists=True))
@click.option("--experts", required=True, type=click.Path(exists=True))
@click.option("--data", required=True, help="Comma-separated corpus dirs (their heldout split is scored).")
@click.option("--base", default=None)
@click.option("--seq-len", default=128, show_default=True, type=int)
@click.option("--blocks", default=16, show_default=True, type=int, help="Held-out blocks per corpus.")
@click.option("--start", default=0, show_default=True, type=int, help="Score positions after this one only.")
def evaluate(composition, experts, data, base, seq_len, blocks, start) -> None:
    """Held-out loss per corpus of a composition whose every token is gated over all members (domain, tuned,
    mot). A composition that selects experts per request (retrieve, selection sequence/both) is refused: score
    it with `expertmesh compose eval`, which runs the selection as serving does.

    Example: expertmesh federate eval --composition runs/tune/composition --experts experts --data corpora/law,corpora/code
    """
    from pathlib import Path

    from expertmesh.compose.spec import read_spec
    from expertmesh.errors import ConfigError
    from router_training.central import evaluate_composition_domains

    spec = read_spec(composition)
    if spec.selection != "token":
        raise ConfigError(f"{spec.name} selects experts per request ({spec.router_type}, selection "
                          f"{spec.selection!r}), which federate eval does not run; use `expertmesh compose eval "
                          f"{composition} --experts {experts} --data CORPUS` (it scores the selection as serving does)")

    dirs = {Path(p.strip()).name: p.strip() for p in data.split(",") if p.strip()}
    click.echo(json.dumps(evaluate_composition_domains(composition, experts, dirs, base=base, seq_len=seq_len,
                                                       max_blocks=blocks, start=start)))


def register(group: click.Group) -> None:
    group.add_command(federate)
