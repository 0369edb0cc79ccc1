"""Router types: how a composition's router tensors are built and how its runtime model is made.

One module per router type, each registered once by name with ``@register_router("<name>")``:

    domain    FlexOlmo: the members' trained router rows concatenated, no training     (routers/domain.py)
    retrieve  domain rows + RouterRetriever selection (faiss over pilots, then top-m)  (routers/retrieve.py)
    tuned     rows/bias from a federated router-tuning artifact                        (routers/tuned.py)
    mot       Mixture-of-Thoughts: a selector + cross-expert interaction layers        (routers/mot/)

The interface (subclass ``RouterType``; every method has a working default):

    build_tensors(experts, base, options) -> dict[str, Tensor]
        the router.safetensors content: ``expert_rows`` [L, N, d], ``anchor_rows`` [L, d], optional ``bias``
        [N+1], ``pilots``/``pilot_owner``, and type-specific tensors under ``"<name>."``.
    build_model(base, experts, spec, tensors) -> ComposedModel (or a subclass)
        the runtime model; it must honour ``forward/generate(..., allowed=[B, N], fixed_weights=[B, N+1],
        trace=bool)``, ``last_trace`` and ``close()`` like ``expertmesh.mixture.model.ComposedModel``.
    subset_tensors(tensors, keep) -> dict[str, Tensor]
        the tensors of the composition restricted to members ``keep`` (indices, in order); used to drop a
        member exactly. Types with their own tensors must override it (the default refuses unknown keys).
    default_options: spec defaults (selection, top_m, top_k) used when the builder is not told otherwise.

A new type subclasses ``RouterType`` in its own module here, registers itself with
``@register_router("<name>")`` and is added to ``_load_builtins``. The built-in modules are imported on first
use (they import torch), so importing this package stays light.
"""
from __future__ import annotations

from typing import Any, Callable

from expertmesh.errors import ConfigError

_REGISTRY: dict[str, type["RouterType"]] = {}


class RouterType:
    """Defaults shared by the router types: FlexOlmo rows, stacked pilots, a plain ComposedModel."""

    name: str = ""
    default_options: dict[str, Any] = {"selection": "token"}
    needs_expert_weights: bool = True         # build_tensors reads LoRA factors (False: signatures only)
    option_names: tuple[str, ...] = ()        # extra build options this type accepts

    # -- building -------------------------------------------------------------------------------------
    def build_tensors(self, experts: list, base, options: dict[str, Any]) -> dict[str, Any]:
        import torch

        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise ConfigError(f"router type {self.name!r} takes no options {unknown} "
                              f"(it accepts {list(self.option_names) or 'none'})")
        tensors = {"expert_rows": torch.stack([e.router_rows.float() for e in experts], 1),
                   "anchor_rows": self.anchor_rows(experts)}
        tensors.update(self.pilot_tensors(experts))
        return tensors

    @staticmethod
    def anchor_rows(experts: list):
        """The public row. Owners of one base compute it from the same public text, so all agree; the mean is
        taken only to be robust to float noise between machines."""
        import torch

        return torch.stack([e.anchor_rows.float() for e in experts]).mean(0)

    @staticmethod
    def pilot_tensors(experts: list) -> dict[str, Any]:
        import torch

        if not experts or any(e.pilots is None or e.pilots.dim() != 2 or e.pilots.shape[0] == 0 for e in experts):
            return {}
        dims = {int(e.pilots.shape[1]) for e in experts}
        if len(dims) != 1:
            raise ConfigError(f"members' pilots have different embedding sizes {sorted(dims)}; they were made "
                              "with different embedders and cannot share one retriever")
        pilots = torch.cat([e.pilots.float() for e in experts], 0)
        owner = torch.cat([torch.full((e.pilots.shape[0],), j, dtype=torch.int64) for j, e in enumerate(experts)])
        return {"pilots": pilots, "pilot_owner": owner}

    # -- runtime --------------------------------------------------------------------------------------
    def build_model(self, base, experts: list, spec, tensors: dict[str, Any]):
        from expertmesh.mixture.model import ComposedModel

        return ComposedModel(base.model, experts, top_k=spec.top_k, temperature=spec.temperature,
                             anchor_rows=tensors["anchor_rows"].float(), expert_rows=tensors["expert_rows"].float(),
                             bias=tensors["bias"].float() if "bias" in tensors else None)

    def subset_tensors(self, tensors: dict[str, Any], keep: list[int]) -> dict[str, Any]:
        import torch

        extra = [k for k in tensors if "." in k]
        if extra:
            raise ConfigError(f"router type {self.name!r} cannot drop members from tensors {extra}; "
                              "it must override subset_tensors")
        idx = torch.tensor(keep, dtype=torch.int64)
        out = {"expert_rows": tensors["expert_rows"][:, idx], "anchor_rows": tensors["anchor_rows"]}
        if "bias" in tensors:
            out["bias"] = torch.cat([tensors["bias"][:1], tensors["bias"][1:][idx]])
        if "pilots" in tensors:
            owner = tensors["pilot_owner"]
            sel = torch.isin(owner, idx)
            remap = torch.full((int(tensors["expert_rows"].shape[1]),), -1, dtype=torch.int64)
            remap[idx] = torch.arange(len(keep))
            out["pilots"] = tensors["pilots"][sel]
            out["pilot_owner"] = remap[owner[sel]]
        return out


def register_router(name: str) -> Callable[[type[RouterType]], type[RouterType]]:
    """Class decorator: register a router type under ``name`` (once; a second registration is an error)."""
    from expertmesh.validate import check_name

    check_name("router_type", name)

    def deco(cls: type[RouterType]) -> type[RouterType]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"router type {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    # Each module registers its type when imported.
    from expertmesh.compose.routers import domain, mot, retrieve, tuned  # noqa: F401


def known_router_types() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_router(name: str) -> RouterType:
    if name not in known_router_types():
        raise ConfigError(f"router_type={name!r} is not a registered router type; choose from {sorted(_REGISTRY)}")
    return _REGISTRY[name]()
