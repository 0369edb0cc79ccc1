"""What a federation trains ("kinds"), registered once by name, plus loading a composition for training.

    router   the composition's router rows + bias (router_training.task)
    mot      Mixture-of-Thoughts selector + interaction layers (router_training.mot_train)

A kind turns the loaded composition's ComposedModel into the object it trains and moves FedAvg-able arrays in
and out of it; the Flower apps and the central trainers only ever talk to this interface:

    kind = get_kind("router")
    model = kind.build(composed, options)          # options: JSON-able dict (e.g. the MoT architecture)
    kind.set_arrays(model, arrays); stats = kind.train(model, blocks, train_cfg, seed); kind.evaluate(...)

No Flower import here: the same kinds run centrally (pooled data) and inside ClientApps.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from expertmesh.errors import ConfigError, ConflictError


class CompositionMismatchError(ConflictError):
    """Server and owner hold different versions of the composition being tuned."""

    code = "composition_mismatch"


def composition_digest(comp_dir: str | Path) -> str:
    """sha256 of the composition's canonical spec; the spec lists router.safetensors' sha256, so this pins the
    members (their digests), the router tensors and the policy."""
    from expertmesh.compose.spec import read_spec

    doc = read_spec(comp_dir).to_dict()
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_composition(expected: str, actual: str, *, where: str = "this owner") -> None:
    if expected != actual:
        raise CompositionMismatchError(
            f"composition version mismatch: the server tunes composition {expected[:12]}, {where} holds "
            f"{actual[:12]}; pull the composition version the coordinator announced and rejoin",
            detail={"expected": expected, "actual": actual})


def load_runtime(composition: str | Path, experts: str | Path, base=None):
    """CompositionRuntime of a stored composition (verifies members and base)."""
    from expertmesh.base import load_base
    from expertmesh.compose.runtime import CompositionRuntime
    from expertmesh.compose.spec import read_spec

    if base is None or isinstance(base, (str, Path)):
        base = load_base(str(base) if base else read_spec(composition).provenance.get("base"))
    return CompositionRuntime.load(composition, experts, base)


@dataclass
class Kind:
    name: str
    build: Callable[[Any, dict], Any]          # (composed model, or the Base when needs_composition=False, options)
    arrays: Callable[[Any], dict[str, torch.Tensor]]
    set_arrays: Callable[[Any, dict], None]
    train: Callable[[Any, torch.Tensor, dict, int], dict]       # stats incl. "tokens"
    evaluate: Callable[[Any, torch.Tensor, dict], float]
    seq_len: Callable[[dict], int]
    save: Callable[..., Any]          # save(model, loaded, experts, run_dir, name, provenance) -> summary dict
    needs_composition: bool = True    # False: owners need only the base (the version checked is its fingerprint)


@dataclass
class Loaded:
    """One party's loaded state for a kind: the composition runtime (if any), the base, the trained object."""

    runtime: Any
    base: Any
    model: Any
    version: str                      # composition digest, or base fingerprint for kinds without composition

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
        elif hasattr(self.model, "close"):
            self.model.close()


def load_for_kind(kind: "Kind", composition: str | Path | None, experts: str | Path | None, base, options: dict,
                  *, expected_version: str | None = None) -> Loaded:
    """Load what ``kind`` trains. With ``expected_version``, a composition mismatch is raised before any model is
    loaded (a cheap refusal)."""
    from expertmesh.base import load_base

    if kind.needs_composition:
        if not composition or not experts:
            raise ConfigError(f"kind {kind.name!r} needs a composition and its experts")
        version = composition_digest(composition)
        if expected_version is not None:
            check_composition(expected_version, version)
        rt = load_runtime(composition, experts, base)
        return Loaded(rt, rt.base, kind.build(rt.model, options), version)
    b = base if base is not None and not isinstance(base, (str, Path)) else load_base(str(base) if base else None)
    if expected_version is not None and expected_version != b.fingerprint:
        raise CompositionMismatchError(f"base mismatch: the server trains on base {expected_version[:12]}, this owner "
                                       f"holds {b.fingerprint[:12]}", detail={"expected": expected_version,
                                                                              "actual": b.fingerprint})
    return Loaded(None, b, kind.build(b, options), b.fingerprint)


_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    if kind.name in _KINDS:
        raise ConfigError(f"training kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    if name not in _KINDS:
        raise ConfigError(f"kind={name!r} is not a known training kind; choose from {sorted(_KINDS)}")
    return _KINDS[name]


# -- router ---------------------------------------------------------------------------------------------------
def _router_train(model, blocks, cfg, seed):
    from router_training.config import TuneConfig
    from router_training.task import tune_router

    return tune_router(model, blocks, TuneConfig.from_dict(cfg), seed=seed)


def _router_eval(model, blocks, cfg):
    from router_training.task import evaluate_loss

    return evaluate_loss(model, blocks)


def _router_arrays(model):
    from router_training.task import router_arrays

    return router_arrays(model)


def _router_set(model, arrays):
    from router_training.task import set_router_arrays

    set_router_arrays(model, arrays)


def _router_seq_len(cfg):
    from router_training.config import TuneConfig

    return TuneConfig.from_dict(cfg).seq_len


def _spec_policy(runtime) -> dict:
    spec = runtime.spec
    return {"top_k": spec.top_k, "top_m": spec.top_m, "temperature": spec.temperature, "selection": spec.selection,
            "score_temperature": spec.score_temperature}


def _router_save(model, loaded, experts, run_dir, name, provenance):
    """``<run_dir>/router_arrays.safetensors`` (the tuning artifact, rows named by member) and
    ``<run_dir>/composition``: a ``tuned`` composition with the same members and policy as the one tuned."""
    from safetensors.torch import save_file

    from expertmesh.compose.build import build_composition
    from router_training.task import router_arrays

    runtime = loaded.runtime
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    artifact = run_dir / "router_arrays.safetensors"
    save_file(router_arrays(model), str(artifact), metadata={"members": json.dumps(runtime.member_names)})
    spec, _ = build_composition(name, _member_dirs(runtime, experts), "tuned", base=runtime.base,
                                out=run_dir / "composition", overwrite=True, artifact=str(artifact),
                                **_spec_policy(runtime),
                                provenance={"base": str(runtime.base.path), "tuned_from": runtime.spec.ref,
                                            **provenance})
    return {"composition": str(run_dir / "composition"), "name": spec.name, "artifact": str(artifact)}


def _member_dirs(runtime, experts) -> dict:
    from expertmesh.compose.runtime import resolve_expert_dirs

    return resolve_expert_dirs(runtime.member_names, experts)


register_kind(Kind("router", build=lambda composed, options: composed, arrays=_router_arrays, set_arrays=_router_set,
                   train=_router_train, evaluate=_router_eval, seq_len=_router_seq_len, save=_router_save))


# -- mot --------------------------------------------------------------------------------------------------------
def _mot_build(composed, options):
    from expertmesh.compose.routers.mot.model import MoTConfig, MoTModel

    torch.manual_seed(int(options.get("init_seed", 0)))   # every party builds the same initial MoT
    arch = {k: v for k, v in options.items() if k != "init_seed"}
    return MoTModel(composed, MoTConfig.from_dict(arch))


def _mot_train(model, blocks, cfg, seed):
    from router_training.mot_train import MoTTrainConfig, train_mot

    return train_mot(model, blocks, MoTTrainConfig.from_dict(cfg), seed=seed)


def _mot_eval(model, blocks, cfg):
    from router_training.mot_train import evaluate_mot

    return evaluate_mot(model, blocks)["loss"]


def _mot_arrays(model):
    from expertmesh.compose.routers.mot.artifact import mot_arrays

    return mot_arrays(model)


def _mot_set(model, arrays):
    from expertmesh.compose.routers.mot.artifact import set_mot_arrays

    set_mot_arrays(model, arrays)


def _mot_seq_len(cfg):
    from router_training.mot_train import MoTTrainConfig

    return MoTTrainConfig.from_dict(cfg).seq_len


def _mot_save(model, loaded, experts, run_dir, name, provenance):
    """``<run_dir>/mot`` (save_mot artifact) and ``<run_dir>/composition``: a ``mot`` composition of the same
    members carrying the trained selector + interaction layers."""
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.routers.mot.artifact import save_mot

    runtime = loaded.runtime
    run_dir = Path(run_dir)
    save_mot(run_dir / "mot", model, provenance=provenance)
    policy = {**_spec_policy(runtime), "top_k": model.cfg.top_k, "selection": "token", "top_m": None}
    spec, _ = build_composition(name, _member_dirs(runtime, experts), "mot", base=runtime.base,
                                out=run_dir / "composition", overwrite=True, artifact=str(run_dir / "mot"), **policy,
                                provenance={"base": str(runtime.base.path), "trained_from": runtime.spec.ref,
                                            **provenance})
    return {"composition": str(run_dir / "composition"), "name": spec.name, "artifact": str(run_dir / "mot")}


register_kind(Kind("mot", build=_mot_build, arrays=_mot_arrays, set_arrays=_mot_set, train=_mot_train,
                   evaluate=_mot_eval, seq_len=_mot_seq_len, save=_mot_save))


# -- lora (the FedAvg single-LoRA baseline, router_training/fedavg_lora.py) ------------------------------------
def _lora(name):
    from router_training import fedavg_lora

    return getattr(fedavg_lora, name)


def _lora_train(model, blocks, cfg, seed):
    from router_training.config import TuneConfig

    return _lora("train_lora")(model, blocks, TuneConfig.from_dict(cfg), seed=seed)


def _lora_save(model, loaded, experts, run_dir, name, provenance):
    out = Path(run_dir) / "expert"
    _lora("save_lora_package")(model, loaded.base, out, name=name, training=provenance)
    return {"expert": str(out), "name": name}


register_kind(Kind("lora", build=lambda base, options: _lora("build_lora_model")(base, options),
                   arrays=lambda m: _lora("lora_arrays")(m), set_arrays=lambda m, a: _lora("set_lora_arrays")(m, a),
                   train=_lora_train, evaluate=lambda m, blocks, cfg: _lora("evaluate_lora")(m, blocks),
                   seq_len=_router_seq_len, save=_lora_save, needs_composition=False))
