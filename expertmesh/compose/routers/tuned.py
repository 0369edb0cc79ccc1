"""``tuned``: router rows (and a per-entry bias) from a federated router-tuning run (router_training/).

Options (one of):
    artifact  path to a safetensors file with ``expert_rows`` [L, N, d] and ``bias`` [N+1] (the arrays
              router_training.task.router_arrays returns), optionally ``anchor_rows`` [L, d], and metadata
              ``members`` = JSON list of member names in row order (then rows are matched by name)
    rows, bias  the tensors themselves (in-process use, e.g. straight after tuning)
"""
from __future__ import annotations

import json
from pathlib import Path

from expertmesh.compose.routers import RouterType, register_router
from expertmesh.errors import ConfigError, PackageError


def read_tuning_artifact(path: str | Path) -> tuple[dict, list[str] | None]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"artifact={str(path)!r} does not exist; give the safetensors file of a tuning run")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise PackageError(f"{path.name} is not a readable safetensors file: {e}") from None
    members = json.loads(meta["members"]) if "members" in meta else None
    return tensors, members


@register_router("tuned")
class TunedRouter(RouterType):
    default_options = {"selection": "token"}
    needs_expert_weights = False
    option_names = ("artifact", "rows", "bias")

    def build_tensors(self, experts, base, options):
        import torch

        options = dict(options)
        if "artifact" in options:
            arrays, order = read_tuning_artifact(options.pop("artifact"))
        elif "rows" in options:
            arrays, order = {"expert_rows": options.pop("rows")}, None
            if options.get("bias") is not None:
                arrays["bias"] = options.pop("bias")
        else:
            raise ConfigError("router type 'tuned' needs artifact=<safetensors of a tuning run> (or rows=, bias=)")
        options.pop("bias", None)
        tensors = super().build_tensors(experts, base, options)
        names = [e.name for e in experts]
        rows = torch.as_tensor(arrays["expert_rows"]).float()
        bias = torch.as_tensor(arrays["bias"]).float() if "bias" in arrays else None
        if order is not None:
            missing = [n for n in names if n not in order]
            if missing:
                raise ConfigError(f"the tuning artifact has no rows for members {missing} (it covers {order})")
            idx = torch.tensor([order.index(n) for n in names])
            rows = rows[:, idx]
            bias = torch.cat([bias[:1], bias[1:][idx]]) if bias is not None else None
        want = tuple(tensors["expert_rows"].shape)
        if tuple(rows.shape) != want:
            raise ConfigError(f"tuned expert_rows has shape {tuple(rows.shape)}, these members need {want}")
        tensors["expert_rows"] = rows
        if bias is not None:
            if tuple(bias.shape) != (len(names) + 1,):
                raise ConfigError(f"tuned bias has shape {tuple(bias.shape)}, expected {(len(names) + 1,)}")
            tensors["bias"] = bias
        if "anchor_rows" in arrays:
            tensors["anchor_rows"] = torch.as_tensor(arrays["anchor_rows"]).float()
        return tensors
