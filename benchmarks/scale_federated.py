"""Federated half of the scale bench: router tuning over N owners with Flower, against central tuning.

Each of the N owners holds one fine domain's training split and the same domain composition of the N experts.
  untuned     the domain composition as built (owners' rows, no joint training)
  federated   Flower simulation (router_training.simulate): R rounds, every owner tunes L local steps on its
              own data only, FedAvg over router rows + bias, then a server step of server_lr on the mean update
              (server_lr = N by default: the mean of N one-domain updates moves ~1/N as far as N*L sequential steps)
  central     the same kind trained on the pooled data with the same total step budget (R * N * L steps),
              the upper bound
Loss is held-out next-token loss per domain (mean over the N domains); gain = untuned - tuned, and the figure
the issue asks for is federated gain / central gain.
"""
from __future__ import annotations

import time
from pathlib import Path


def link_members(dirs: dict[str, Path], root: Path) -> Path:
    """A directory with one entry per member name (what the owners' ClientApps and load_runtime expect)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, path in dirs.items():
        link = root / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(path).resolve(), target_is_directory=True)
    return root


def run_federated(base, base_spec: str | None, dirs: dict[str, Path], corpora: dict[str, Path], work: Path, *,
                  rounds: int, local_steps: int, batch_size: int, seq_len: int, lr: float, eval_blocks: int,
                  log, server_lr: float = 1.0) -> dict:
    from expertmesh.compose.build import build_composition
    from router_training.central import evaluate_composition_domains, train_central
    from router_training.client_app import OwnerSetup
    from router_training.server_app import ServerSetup
    from router_training.simulate import simulate

    names = list(dirs)
    n = len(names)
    experts = link_members(dirs, work / "experts")
    comp = work / "comp-domain"
    build_composition(f"scale-fed-{n}", {d: dirs[d] for d in names}, "domain", base=base, out=comp,
                      overwrite=True, provenance={"base": base_spec} if base_spec else None)
    data = {d: str(corpora[d]) for d in names}
    tune = {"steps": local_steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "eval_blocks": eval_blocks}

    def evaluate(path: Path) -> dict:
        return evaluate_composition_domains(str(path), str(experts), data, base=base, seq_len=seq_len,
                                            max_blocks=eval_blocks)

    out: dict = {"owners": n, "rounds": rounds, "local_steps": local_steps, "batch_size": batch_size,
                 "seq_len": seq_len, "lr": lr, "eval_blocks": eval_blocks, "server_lr": server_lr,
                 "phase_seconds": {}}
    t0 = time.perf_counter()
    out["untuned"] = evaluate(comp)
    out["phase_seconds"]["untuned_eval"] = round(time.perf_counter() - t0, 1)
    log(f"[scale] federated N={n}: untuned mean {out['untuned']['mean']:.4f}")

    t0 = time.perf_counter()
    owners = [OwnerSetup(str(comp), str(experts), data[d], base=base_spec, owner=d) for d in names]
    setup = ServerSetup(str(comp), str(experts), str(work / "federated"), base=base_spec, train=tune,
                        federation={"rounds": rounds, "min_clients": n, "min_available": n, "round_timeout": 3600,
                                    "server_lr": server_lr})
    hist = simulate(setup, owners, cpus_per_client=2, total_cpus=2)
    out["phase_seconds"]["federated_train"] = round(time.perf_counter() - t0, 1)
    out["federated_train_tokens"] = sum(v["num-examples"] for r in hist["rounds"] for v in r["train"].values())
    out["federated"] = evaluate(Path(hist["output"]["composition"]))
    log(f"[scale] federated N={n}: federated mean {out['federated']['mean']:.4f}")

    t0 = time.perf_counter()
    total = rounds * n * local_steps
    h = train_central("router", str(comp), str(experts), list(data.values()), {**tune, "steps": total},
                      out=str(work / "central"), base=base)
    out["phase_seconds"]["central_train"] = round(time.perf_counter() - t0, 1)
    out["central_steps"] = total
    out["central_train_tokens"] = h["stats"].get("tokens")
    out["central"] = evaluate(Path(h["output"]["composition"]))
    log(f"[scale] federated N={n}: central mean {out['central']['mean']:.4f}")

    fed_gain = out["untuned"]["mean"] - out["federated"]["mean"]
    central_gain = out["untuned"]["mean"] - out["central"]["mean"]
    out["federated_gain_nats"] = round(fed_gain, 5)
    out["central_gain_nats"] = round(central_gain, 5)
    out["gain_ratio"] = round(fed_gain / central_gain, 3) if central_gain > 0 else None
    return out
