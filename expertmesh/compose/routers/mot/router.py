"""Composition router type ``mot``: Mixture-of-Thoughts as a composition the runtime can load and generate with.

router.safetensors of a ``mot`` composition holds the usual core tensors (the members' rows, used only to
initialise the selector) plus ``mot.arch`` (int64 codes of ARCH_FIELDS) and ``mot.<name>`` for every selector / interaction weight. Build one with

    build_composition("clinic-mot", "experts/", "mot", base=base, out="compositions/clinic-mot", top_k=2,
                      mot=trained_mot_model)            # or artifact="runs/mot" (a save_mot directory)

``mot`` is a built-in router type (expertmesh.compose.routers loads this package on first use), so
``expertmesh compose generate`` works on a stored ``mot`` composition, and ``expertmesh serve`` batches it with
MoTBatch (batch.py). The runtime model honours the
ComposedModel contract (forward/generate with ``allowed``, ``last_trace``, ``close``); its trace reports the
selector's weights over the active experts, constant across layers (MoT routes per request, not per token).
A request that leaves no expert is answered by the public base, as with the other router types.
"""
from __future__ import annotations

from pathlib import Path

import torch

from expertmesh.compose.routers import RouterType, register_router
from expertmesh.compose.routers.mot.artifact import (
    MOT_WEIGHTS_FILE, mot_config_from_saved, read_mot_config, set_mot_arrays,
)
from expertmesh.compose.routers.mot.batch import MoTBatch
from expertmesh.compose.routers.mot.model import STREAM_KINDS, MoTConfig, MoTModel
from expertmesh.errors import ConfigError
from expertmesh.mixture.model import RoutingTrace

ARCH_FIELDS = ("top_k", "num_interaction", "latent_dim", "num_heads", "select_tokens", "selector_hidden",
               "include_public", "streams")
# Per-member tensors of a MoT (first dimension = member), what subset_tensors must index when dropping members.
_PER_MEMBER = ("selector.keys", "selector.bias")


def _per_member(key: str) -> bool:
    return key in _PER_MEMBER or (key.startswith("interactions.") and key.endswith(".proj"))


def mot_tensors(mot: MoTModel) -> dict[str, torch.Tensor]:
    return {"mot.arch": arch_tensor(mot.cfg), **{f"mot.{k}": v.detach().float() for k, v in mot.state_dict().items()}}


def arch_tensor(cfg: MoTConfig) -> torch.Tensor:
    """The architecture as int64 codes (booleans as 0/1, streams as its index in STREAM_KINDS)."""
    codes = {"streams": STREAM_KINDS.index(cfg.streams)}
    return torch.tensor([codes[f] if f in codes else int(getattr(cfg, f)) for f in ARCH_FIELDS], dtype=torch.int64)


def mot_from_tensors(composed, tensors: dict[str, torch.Tensor], top_k: int | None = None) -> MoTModel:
    if "mot.arch" not in tensors:
        raise ConfigError("this composition has no mot.arch tensor; build it with router type 'mot'")
    cfg = dict(zip(ARCH_FIELDS, (int(x) for x in tensors["mot.arch"].tolist())))
    cfg["include_public"] = bool(cfg.get("include_public", 0))
    # Compositions stored before ``streams`` existed were trained with LoRA-alone streams (code 0).
    cfg["streams"] = STREAM_KINDS[cfg.get("streams", 0)]
    if top_k is not None:
        cfg["top_k"] = int(top_k)
    mot = MoTModel(composed, MoTConfig(**cfg))
    state = {k[4:]: v for k, v in tensors.items() if k.startswith("mot.") and k != "mot.arch"}
    set_mot_arrays(mot, state)
    mot.eval()
    return mot


class MoTComposed:
    """The runtime model of a ``mot`` composition (ComposedModel contract, MoT inside)."""

    batch_class = MoTBatch      # what `expertmesh serve`'s engine batches this model's rows with

    def __init__(self, composed, mot: MoTModel):
        self.composed, self.mot = composed, mot
        self.last_trace: RoutingTrace | None = None

    # what callers read off a ComposedModel
    @property
    def router(self):
        return self.composed.router

    @property
    def base_model(self):
        return self.composed.base_model

    @property
    def experts(self):
        return self.composed.experts

    @property
    def expert_names(self) -> list[str]:
        return self.composed.expert_names

    @property
    def entries(self) -> list[str]:
        return self.composed.entries

    def mask_for(self, include=None, exclude=None):
        return self.composed.mask_for(include, exclude)

    def close(self) -> None:
        self.mot.close()
        self.composed.close()

    def routing(self, *args, **kwargs):
        """What token-level code calls to run the base under one gate; MoT runs K expert streams instead."""
        raise ConfigError("a 'mot' composition does not run under a single token gate; use its forward/generate "
                          "(the serving engine batches it with MoTBatch)")

    def _rows(self, allowed: torch.Tensor | None, batch: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        if allowed is None:
            return None, torch.ones(batch, dtype=torch.bool)
        allowed = allowed.to(torch.bool)
        if allowed.dim() == 1:
            allowed = allowed[None].expand(batch, -1)
        return allowed, allowed.any(1)

    def trace_for(self, out, live: torch.Tensor, batch: int) -> RoutingTrace:
        E = len(self.entries)
        mass = torch.zeros(batch, E)
        mass[~live, 0] = 1.0                                     # answered by the public base
        rows = torch.nonzero(live).flatten()
        if out is not None:
            mass[rows[:, None], self.mot.gate_columns(out.experts)] = out.weights.float()
        notes = [[] for _ in range(batch)]
        for i, b in enumerate(rows.tolist()):
            if out is not None:
                names = [self.mot.candidate_names[j] for j in out.experts[i].tolist()]
                notes[b] = [f"mot primary: {names[0]}", f"mot peers: {names[1:]}"]
        L = self.base_model.config.num_hidden_layers
        return RoutingTrace(entries=self.entries, mass=mass, per_layer=mass[None].expand(L, -1, -1).clone(),
                            tokens=torch.zeros(batch), notes=notes)

    def forward(self, input_ids, attention_mask=None, labels=None, *, allowed=None, fixed_weights=None,
                trace: bool = False):
        if fixed_weights is not None:
            raise ConfigError("a 'mot' composition selects its own experts; use selection 'token' (no fixed weights)")
        B = input_ids.shape[0]
        allowed, live = self._rows(allowed, B)
        if not bool(live.all()):
            raise ConfigError("MoT forward needs at least one allowed expert per row (generate falls back to the base)")
        out = self.mot(input_ids, attention_mask, labels, allowed=allowed)
        self.last_trace = self.trace_for(out, live, B) if trace else None
        return out

    __call__ = forward

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, allowed=None, fixed_weights=None, trace: bool = False,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float | None = None,
                 top_p: float | None = None, pad_token_id: int | None = None, **_ignored) -> torch.Tensor:
        if fixed_weights is not None:
            raise ConfigError("a 'mot' composition selects its own experts; use selection 'token' (no fixed weights)")
        B = input_ids.shape[0]
        allowed, live = self._rows(allowed, B)
        eos = self.base_model.config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        pad = pad_token_id if pad_token_id is not None else eos
        temp = float(temperature or 1.0) if do_sample else 0.0
        pieces: dict[int, torch.Tensor] = {}
        sel = None
        rows = torch.nonzero(live).flatten()
        if len(rows):
            am = attention_mask[rows] if attention_mask is not None else None
            ids, sel = self.mot.generate(input_ids[rows], am, allowed=None if allowed is None else allowed[rows],
                                         max_new_tokens=max_new_tokens, temperature=temp, top_p=top_p or 1.0,
                                         eos_token_id=eos)
            pieces.update({int(b): ids[i] for i, b in enumerate(rows)})
        dead = torch.nonzero(~live).flatten()
        if len(dead):                                             # nothing allowed: the public base answers
            am = attention_mask[dead] if attention_mask is not None else None
            ids = self.composed.generate(input_ids[dead], am, allowed=torch.zeros(len(dead), len(self.experts),
                                                                                   dtype=torch.bool),
                                         max_new_tokens=max_new_tokens, do_sample=do_sample,
                                         temperature=temperature if do_sample else None, pad_token_id=pad)
            pieces.update({int(b): ids[i] for i, b in enumerate(dead)})
        width = max(len(p) for p in pieces.values())
        out = torch.full((B, width), pad, dtype=torch.long)
        for b, p in pieces.items():
            out[b, :len(p)] = p
        self.last_trace = self.trace_for(sel, live, B) if trace else None
        return out


@register_router("mot")
class MoTRouter(RouterType):
    default_options = {"selection": "token", "top_k": 2}
    option_names = ("mot", "artifact")

    def build_tensors(self, experts, base, options):
        options = dict(options)
        mot, artifact = options.pop("mot", None), options.pop("artifact", None)
        tensors = super().build_tensors(experts, base, options)
        names = [e.name for e in experts]
        if mot is None and artifact is None:
            raise ConfigError("router type 'mot' needs mot=<trained MoTModel> or artifact=<save_mot directory>; "
                              "train one with `expertmesh federate mot-train`")
        if mot is not None:
            trained, order = mot_tensors(mot), mot.expert_names
        else:
            from safetensors.torch import load_file

            meta = read_mot_config(artifact)
            arch = arch_tensor(mot_config_from_saved(meta["config"]))
            state = load_file(str(Path(artifact) / MOT_WEIGHTS_FILE))
            trained, order = {"mot.arch": arch, **{f"mot.{k}": v for k, v in state.items()}}, meta["experts"]
        if order != names:
            raise ConfigError(f"the MoT was trained for experts {order}, the composition's members are {names}")
        tensors.update(trained)
        return tensors

    def build_model(self, base, experts, spec, tensors):
        composed = super().build_model(base, experts, spec, tensors)
        return MoTComposed(composed, mot_from_tensors(composed, tensors, top_k=spec.top_k))

    def subset_tensors(self, tensors, keep):
        core = {k: v for k, v in tensors.items() if not k.startswith("mot.")}
        out = super().subset_tensors(core, keep)
        n = int(tensors["expert_rows"].shape[1])
        at = ARCH_FIELDS.index("include_public")
        public = len(tensors["mot.arch"]) > at and bool(int(tensors["mot.arch"][at]))
        idx = torch.tensor(list(keep) + ([n] if public else []), dtype=torch.int64)   # the public candidate is last
        for k, v in tensors.items():
            if k.startswith("mot."):
                out[k] = v[idx] if _per_member(k[4:]) else v
        return out
