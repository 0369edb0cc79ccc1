"""Sequence-level routing for the vLLM backend: the composition's retriever picks one expert per request.

    router = GatewayRouter.load(composition_dir, expert_dirs)        # spec + pilots; no base weights loaded
    choice = router.route("What is the dose of aspirin?", Selection(exclude=["law"]), withdrawn={"code"})
    choice.expert, choice.adapter, choice.package, choice.routing     # None/None/None: the public base answers

A vLLM worker applies one LoRA per sequence, so the native engine's token-level gate has no equivalent here.
The plan is the core one (expertmesh.compose.plan.make_plan with selection "sequence": opt-outs, tags, owner
withdrawal, min_score, then the retriever's top-m); the gateway serves its best candidate and says so in the
routing notes. A composition without pilot embeddings cannot be routed this way and is refused at load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from expertmesh.compose.plan import make_plan
from expertmesh.compose.selector import PilotIndex
from expertmesh.errors import ConfigError, PackageError

SEQUENCE_NOTE = ("token-level gating is not available on the vllm backend: the retriever picks one expert per "
                 "request at sequence level (its best candidate)")


def adapter_id(name: str, version) -> str:
    """The LoRA name a worker knows an expert version by (a new version never reuses an old one's name)."""
    return f"{name}@{version}" if version not in (None, "") else name


@dataclass
class RouteChoice:
    expert: str | None                     # None: the public base (no adapter)
    adapter: str | None                    # the worker-side LoRA name
    package: Path | None                   # the expert package directory the worker loads
    routing: dict = field(default_factory=dict)


class GatewayRouter:
    def __init__(self, spec, tensors: dict, expert_dirs: dict[str, Path], *,
                 embed: Callable[[list[str]], np.ndarray] | None = None):
        if "pilots" not in tensors or len(tensors["pilots"]) == 0:
            raise ConfigError(f"composition {spec.ref} has no pilot embeddings: the vllm backend routes at "
                              "sequence level with the retriever and needs them (rebuild with router type "
                              "'retrieve', or serve it with the native backend)")
        missing = [m for m in spec.member_names if m not in expert_dirs]
        if missing:
            raise PackageError(f"no expert package for members {missing} of composition {spec.ref}",
                               detail={"missing": missing})
        self.spec = spec
        self.expert_dirs = {k: Path(v) for k, v in expert_dirs.items()}
        self.index = PilotIndex(tensors["pilots"].numpy(), tensors["pilot_owner"].numpy(), len(spec.members),
                                rule=spec.pilot_score)
        self._embed = embed
        self.adapters = {m.name: adapter_id(m.name, m.version) for m in spec.members}

    @classmethod
    def load(cls, composition_dir: str | Path, expert_dirs: dict[str, Path], **kw) -> "GatewayRouter":
        from expertmesh.compose.spec import read_composition

        spec, tensors = read_composition(composition_dir)
        return cls(spec, tensors, expert_dirs, **kw)

    @property
    def members(self) -> list[str]:
        return self.spec.member_names

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embed is None:
            from expertmesh.embedder import get_embedder

            self._embed = get_embedder(self.spec.embedder).embed
        return self._embed(texts)

    def expert_of(self, adapter: str) -> str | None:
        return next((n for n, a in self.adapters.items() if a == adapter), None)

    def check(self, selection) -> None:
        """Unknown names in the request's selection raise UnknownExpertError (cheap: no embedding)."""
        from expertmesh.compose.plan import policy_mask

        policy_mask(self.spec, include=selection.include, exclude=selection.exclude or None, tags=selection.tags,
                    exclude_tags=selection.exclude_tags or None)

    def route(self, text: str, selection, withdrawn: set[str], *, fail_closed: bool = False) -> RouteChoice:
        """One request's choice. ``selection`` is the request's expertmesh.serving.composition.Selection;
        unknown names raise UnknownExpertError (400) exactly as on the native backend."""
        plan = make_plan(self.spec, [text], index=self.index, embed=self.embed, withdrawn=withdrawn,
                         selection="sequence", include=selection.include, exclude=selection.exclude or None,
                         tags=selection.tags, exclude_tags=selection.exclude_tags or None)
        row = plan.row(0)
        notes = [*row["notes"], SEQUENCE_NOTE]
        expert = row["candidates"][0] if row["candidates"] else None
        if fail_closed and expert is not None:
            notes.append("the registry is unreachable: serving the public base only until it answers again")
            expert = None
        routing = {"backend": "vllm", "selection": "sequence", "expert": expert, "candidates": row["candidates"],
                   "scores": row["scores"], "notes": notes,
                   "weights": {expert: 1.0} if expert else {"public": 1.0}}
        if expert is None:
            return RouteChoice(None, None, None, routing)
        return RouteChoice(expert, self.adapters[expert], self.expert_dirs[expert], routing)
