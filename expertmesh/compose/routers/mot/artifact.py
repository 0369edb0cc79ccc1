"""A trained MoT's artifact and its arrays: ``save_mot`` / ``read_mot_config`` and the FedAvg-able state.

A ``save_mot`` directory holds mot.safetensors (the selector and interaction weights) and mot.json (format,
architecture, expert order, interaction depths, parameter count, provenance). ``build_composition(...,
"mot", artifact=DIR)`` reads it; router_training writes it after (federated) training.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from expertmesh.compose.routers.mot.model import MoTConfig, MoTModel
from expertmesh.errors import ConfigError, PackageError
from expertmesh.fileio import write_json_atomic

MOT_WEIGHTS_FILE = "mot.safetensors"
MOT_CONFIG_FILE = "mot.json"
MOT_FORMAT = "expertmesh-mot/1"


# -- arrays that travel (FedAvg-able) ------------------------------------------------------------------------
def mot_arrays(mot: MoTModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone().contiguous() for k, v in mot.state_dict().items()}


def set_mot_arrays(mot: MoTModel, arrays: Mapping[str, torch.Tensor]) -> None:
    own = mot.state_dict()
    if set(own) != set(arrays):
        raise ConfigError(f"MoT arrays do not match this MoT: missing {sorted(set(own) - set(arrays))[:3]}, "
                          f"unexpected {sorted(set(arrays) - set(own))[:3]}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(arrays[k].shape)]
    if bad:
        raise ConfigError(f"MoT array {bad[0]} has shape {tuple(arrays[bad[0]].shape)}, expected "
                          f"{tuple(own[bad[0]].shape)} (same experts and MoT config on both sides?)")
    mot.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})


def num_parameters(mot: MoTModel) -> int:
    return sum(p.numel() for p in mot.parameters())


# -- artifacts -------------------------------------------------------------------------------------------------
def save_mot(out_dir: str | Path, mot: MoTModel, *, provenance: dict | None = None) -> None:
    """Write mot.safetensors + mot.json (architecture, expert order, depths, provenance) into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(mot_arrays(mot), str(out_dir / MOT_WEIGHTS_FILE))
    write_json_atomic(out_dir / MOT_CONFIG_FILE, {"format": MOT_FORMAT, "config": mot.cfg.to_dict(),
                                                   "experts": mot.expert_names, "depths": mot.depths,
                                                   "parameters": num_parameters(mot),
                                                   "provenance": provenance or {}})


def read_mot_config(path: str | Path) -> dict:
    path = Path(path)
    f = path / MOT_CONFIG_FILE
    if not f.is_file():
        raise PackageError(f"{path} has no {MOT_CONFIG_FILE}; train one with `expertmesh federate mot-train`")
    meta = json.loads(f.read_text())
    if meta.get("format") != MOT_FORMAT:
        raise PackageError(f"{f}: format {meta.get('format')!r} is not {MOT_FORMAT!r}")
    return meta


def mot_config_from_saved(config: dict) -> MoTConfig:
    """A saved mot.json config; one written before ``streams`` existed was trained with LoRA-alone streams."""
    return MoTConfig.from_dict({"streams": "lora", **config})
