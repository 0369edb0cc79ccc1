"""CompositionRuntime: a loaded composition over one frozen base, ready to plan, score and generate.

    rt = CompositionRuntime.load("compositions/clinic", "experts/")        # experts/<member name>/ packages
    plan = rt.plan(["What is the dose of aspirin?"], exclude=["law"])
    out = rt.generate(["What is the dose of aspirin?"], max_new_tokens=32, plan=plan)
    out[0].text, out[0].trace["gate_mass"]

Live withdrawal is a mask change (``set_withdrawn``), exact by construction; ``remove_member`` drops a member's
weights for good by rebuilding the mixture without it. Model calls are serialised by a lock, because the router
state a forward pass reads (masks, trace) lives on the model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from expertmesh.compose.plan import RoutingPlan, make_plan
from expertmesh.compose.routers import get_router
from expertmesh.compose.selector import PilotIndex
from expertmesh.compose.spec import CompositionSpec, expert_digest, read_composition
from expertmesh.errors import BaseMismatchError, ConfigError, PackageError, UnknownMemberError


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    trace: dict[str, Any] = field(default_factory=dict)


def resolve_expert_dirs(members: list[str], expert_dirs: dict[str, Path] | str | Path) -> dict[str, Path]:
    """Member name -> package dir; a single directory means one subdirectory per member name."""
    if isinstance(expert_dirs, dict):
        return {k: Path(v) for k, v in expert_dirs.items()}
    root = Path(expert_dirs)
    return {m: root / m for m in members if (root / m).is_dir()}


class CompositionRuntime:
    def __init__(self, spec: CompositionSpec, tensors: dict[str, torch.Tensor], base, experts: list, *,
                 notes: list[str] | None = None, lazy: bool = False):
        if [e.name for e in experts] != spec.member_names:
            raise ConfigError(f"experts {[e.name for e in experts]} do not match the members {spec.member_names}")
        if base.fingerprint != spec.base_fingerprint:
            raise BaseMismatchError(f"composition {spec.ref} was built for base {spec.base_fingerprint[:12]}, "
                                    f"not for the base in use ({base.fingerprint[:12]})")
        self.spec, self.tensors, self.base, self.experts = spec, tensors, base, list(experts)
        self.router = get_router(spec.router_type)
        self.model = self.router.build_model(base, self.experts, spec, tensors)
        self.withdrawn: set[str] = set()
        self.lazy = lazy                         # weights not loaded: only a resident set may run the model
        self.notes = list(notes or [])           # load-time notes (e.g. members dropped because missing)
        self._index = self._make_index()
        self._lock = threading.RLock()

    # -- loading --------------------------------------------------------------------------------------
    @classmethod
    def load(cls, composition_dir: str | Path, expert_dirs: dict[str, Path] | str | Path, base=None, *,
             missing: str = "error", lazy: bool = False) -> "CompositionRuntime":
        """Verify and load a composition and its member experts onto ``base`` (default: the base in provenance).

        missing="error" refuses a member with no package; missing="drop" builds the composition without it,
        which the opt-out property makes equal to a composition that never had it. ``lazy=True`` reads only
        the members' signatures: their LoRA weights stay on disk until a resident set loads them (serving)."""
        from expertmesh.base import load_base
        from expertmesh.mixture.lora_io import load_expert

        spec, tensors = read_composition(composition_dir)
        if base is None:
            base = load_base(spec.provenance.get("base"))
        if base.fingerprint != spec.base_fingerprint:
            raise BaseMismatchError(f"composition {spec.ref} was built for base {spec.base_fingerprint[:12]}, "
                                    f"not for the base in use ({base.fingerprint[:12]})")
        dirs = resolve_expert_dirs(spec.member_names, expert_dirs)
        absent = [m for m in spec.member_names if m not in dirs or not Path(dirs[m]).is_dir()]
        notes = []
        if absent and missing != "drop":
            raise PackageError(f"no expert package for members {absent} of composition {spec.ref}; "
                               "pull them or load with missing='drop'", detail={"missing": absent})
        if absent:
            spec, tensors = drop_members(spec, tensors, absent)
            notes.append(f"members {absent} were not available and are not part of this runtime")
        experts = []
        for m in spec.members:
            e = load_expert(dirs[m.name], expected_fingerprint=base.fingerprint, name=m.name, weights=not lazy)
            if m.digest and expert_digest(e.manifest) != m.digest:
                raise PackageError(f"expert package {dirs[m.name]} is not the version of {m.name!r} this composition "
                                   f"was built for ({m.ref}, digest {m.digest[:12]})")
            experts.append(e)
        return cls(spec, tensors, base, experts, notes=notes, lazy=lazy)

    def _make_index(self) -> PilotIndex | None:
        if "pilots" not in self.tensors or len(self.tensors["pilots"]) == 0:
            return None
        return PilotIndex(self.tensors["pilots"].numpy(), self.tensors["pilot_owner"].numpy(), len(self.experts),
                          rule=self.spec.pilot_score)

    # -- membership and withdrawal ----------------------------------------------------------------------
    @property
    def member_names(self) -> list[str]:
        return self.spec.member_names

    def set_withdrawn(self, names: Iterable[str]) -> set[str]:
        """Replace the set of owner-withdrawn members (names outside the composition are ignored); returns it."""
        self.withdrawn = {n for n in names if n in self.member_names}
        return set(self.withdrawn)

    def remove_member(self, name: str) -> None:
        """Drop a member's weights and rows for good (rebuilds the mixture on the same base)."""
        if name not in self.member_names:
            raise UnknownMemberError(f"unknown expert {name!r}; this composition has {self.member_names}")
        with self._lock:
            spec, tensors = drop_members(self.spec, self.tensors, [name], router=self.router)
            experts = [e for e in self.experts if e.name != name]
            self.model.close()
            self.spec, self.tensors, self.experts = spec, tensors, experts
            self.model = self.router.build_model(self.base, experts, spec, tensors)
            self.withdrawn.discard(name)
            self._index = self._make_index()

    @contextlib.contextmanager
    def without(self, names: Iterable[str]) -> Iterator["CompositionRuntime | None"]:
        """A runtime of this composition with ``names`` dropped (what a composition that never had them runs),
        on the same base and expert weights; None when that leaves no member (then the base runs unwrapped).

        Both wrap the one base in place, so this runtime is unwrapped for the block and rebuilt from its own
        spec and tensors after it (same rows, same output); its lock is held throughout. A top-k set on the
        running router (``--top-k``) carries over to both."""
        names = list(names)
        for n in names:
            if n not in self.member_names:
                raise UnknownMemberError(f"unknown expert {n!r}; this composition has {self.member_names}")
        with self._lock:
            top_k = getattr(getattr(self.model, "router", None), "top_k", None)
            self.model.close()
            try:
                if set(names) >= set(self.member_names):
                    yield None
                    return
                spec, tensors = drop_members(self.spec, self.tensors, names, router=self.router)
                sub = CompositionRuntime(spec, tensors, self.base, [e for e in self.experts if e.name not in names],
                                         lazy=self.lazy)
                sub.set_withdrawn(self.withdrawn)
                _set_top_k(sub.model, top_k)
                try:
                    yield sub
                finally:
                    sub.close()
            finally:
                self.model = self.router.build_model(self.base, self.experts, self.spec, self.tensors)
                _set_top_k(self.model, top_k)

    def close(self) -> None:
        with self._lock:
            self.model.close()

    # -- routing -----------------------------------------------------------------------------------------
    def embed(self, texts: list[str]):
        from expertmesh.embedder import get_embedder

        return get_embedder(self.spec.embedder).embed(texts)

    def plan(self, prompts: list[str], *, include=None, exclude=None, tags=None, exclude_tags=None, licences=None,
             withdrawn: Iterable[str] = frozenset(), embeddings=None, selection: str | None = None,
             check_names: bool = True) -> RoutingPlan:
        """Routing plan for a batch of prompts (the prompt is embedded once, only if the retriever runs).

        include/exclude: member names (unknown names raise UnknownMemberError); tags: keep members carrying any
        of these domain tags; exclude_tags: drop members carrying any; licences: keep members whose licence is
        listed; withdrawn: extra owner-withdrawn names for this call; embeddings: precomputed prompt
        embeddings [B, e]; selection: override the composition's "token" | "sequence" | "both" for this call."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return make_plan(self.spec, list(prompts), index=self._index, embed=self.embed, embeddings=embeddings,
                         withdrawn=self.withdrawn | set(withdrawn), include=include, exclude=exclude, tags=tags,
                         exclude_tags=exclude_tags, licences=licences, selection=selection,
                         check_names=check_names)

    def _default_plan(self, input_ids: torch.Tensor) -> RoutingPlan:
        prompts = self.base.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        return self.plan(prompts)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                plan: RoutingPlan | None = None, *, labels: torch.Tensor | None = None, trace: bool = False):
        """The composed model's output (``.logits``, ``.loss`` with labels) under ``plan``."""
        plan = (plan or self._default_plan(input_ids)).expand(input_ids.shape[0])
        self._check_plan(plan)
        with self._lock, torch.inference_mode():
            return self.model(input_ids, attention_mask, labels, allowed=plan.allowed,
                              fixed_weights=plan.fixed_weights, trace=trace)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               plan: RoutingPlan | None = None) -> torch.Tensor:
        return self.forward(input_ids, attention_mask, plan).logits

    def last_trace(self, plan: RoutingPlan | None = None, b: int = 0, *, per_layer: bool = False) -> dict[str, Any]:
        """Trace of request ``b`` of the last traced call: plan facts plus mean gate mass per entry."""
        t = self.model.last_trace
        out: dict[str, Any] = plan.row(b) if plan is not None else {}
        if t is not None:
            out["gate_mass"] = t.row(b)
            if per_layer:
                out["per_layer"] = [{n: round(float(t.per_layer[layer, b, e]), 6) for e, n in enumerate(t.entries)}
                                    for layer in range(t.per_layer.shape[0])]
        return out

    def route(self, prompts: list[str], plan: RoutingPlan | None = None, *, per_layer: bool = True) -> list[dict]:
        """Explain routing without generating: per prompt, the plan facts and the gate mass over its tokens
        (overall and per layer)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        plan = (plan or self.plan(prompts)).expand(len(prompts))
        enc = self.base.tokenizer(list(prompts), return_tensors="pt", padding=True)
        with self._lock:
            self.forward(enc["input_ids"], enc["attention_mask"], plan, trace=True)
            return [{"prompt": p, "tokens": int(enc["attention_mask"][b].sum()),
                     **self.last_trace(plan, b, per_layer=per_layer)} for b, p in enumerate(prompts)]

    def _check_plan(self, plan: RoutingPlan) -> None:
        if self.lazy and getattr(self.model, "resident_set", None) is None:
            raise ConfigError("this composition was loaded lazily (signatures only); its experts' weights are "
                              "loaded by a serving resident set, so run it through the engine or load it with "
                              "lazy=False")
        if plan.members != self.member_names:
            raise ConfigError("this routing plan was made for another member list; make a new plan after "
                              "remove_member")

    # -- generation ----------------------------------------------------------------------------------------
    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 plan: RoutingPlan | None = None, trace: bool = True, per_layer: bool = False,
                 seed: int | None = None) -> list[Generation]:
        """Batched generation; temperature 0 is greedy. Each Generation's trace says who answered."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tok = self.base.tokenizer
        plan = (plan or self.plan(prompts)).expand(len(prompts))
        self._check_plan(plan)
        side = tok.padding_side
        tok.padding_side = "left"                     # generation continues from the last real token
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id}
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock:
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(enc["input_ids"], enc["attention_mask"], allowed=plan.allowed,
                                      fixed_weights=plan.fixed_weights, trace=trace, **kw)
            gens = []
            for b in range(len(prompts)):
                ids = out[b, enc["input_ids"].shape[1]:].tolist()
                if tok.eos_token_id in ids:
                    ids = ids[:ids.index(tok.eos_token_id)]
                gens.append(Generation(text=tok.decode(ids, skip_special_tokens=True), token_ids=ids,
                                       trace=self.last_trace(plan, b, per_layer=per_layer) if trace else {}))
        return gens


def _set_top_k(model, top_k: int | None) -> None:
    router = getattr(model, "router", None)
    if top_k is not None and router is not None and hasattr(router, "top_k"):
        router.top_k = top_k


def drop_members(spec: CompositionSpec, tensors: dict, names: list[str], *, router=None):
    """(spec, tensors) of the composition without ``names`` (what a composition built without them holds)."""
    router = router or get_router(spec.router_type)
    keep = [j for j, n in enumerate(spec.member_names) if n not in set(names)]
    if not keep:
        raise ConfigError(f"dropping {names} would leave composition {spec.ref} without members")
    new_spec = dataclasses.replace(spec, members=[spec.members[j] for j in keep], version=None, files={},
                                   provenance={**spec.provenance, "dropped": sorted(
                                       set(spec.provenance.get("dropped", [])) | set(names))})
    return new_spec, router.subset_tensors(tensors, keep)
