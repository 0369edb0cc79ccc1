"""ServedComposition: what the engine needs from a composition, over a ``CompositionRuntime``.

    model        the runtime's ComposedModel (wraps the shared frozen base in place)
    tokenizer    the base's tokenizer (guarded by ``tokenizer_lock``: fast tokenizers are not re-entrant)
    members      expert names in gate order; ``tags[name]``; ``expert_dirs[name]`` (to reload evicted weights)
    plan_row()   one request's selection -> RowPlan (allowed mask, optional sequence weights, candidates, notes)

Selection semantics are the runtime's (expertmesh.compose.plan): unknown names are errors (checked once, at
submit, by ``check_names``), a withdrawn member is left out with a note (the one place withdrawal is applied;
the engine re-plans a running row when its members are withdrawn), a request that leaves no expert is
answered by the public base (noted).

The expert mask has one form from here to the gate: ``RowPlan.allowed``, a [N] bool tensor in member order;
the engine stacks the rows' masks into the [B, N] ``allowed`` of each forward.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from expertmesh.errors import UnknownMemberError
from expertmesh.serving.kvbatch import KVBatch


@dataclass
class Selection:
    include: list[str] | None = None          # None: every member; []: none
    exclude: list[str] = field(default_factory=list)
    tags: list[str] | None = None             # None: no tag filter
    exclude_tags: list[str] = field(default_factory=list)


@dataclass
class RowPlan:
    allowed: torch.Tensor                     # [N] bool over the members, in composition order
    candidates: list[str]
    notes: list[str]
    fixed: torch.Tensor | None = None         # [N+1] sequence-level weights (public first), if any
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def public_only(cls, n_members: int, note: str) -> "RowPlan":
        return cls(allowed=torch.zeros(n_members, dtype=torch.bool), candidates=[], notes=[note])


class ServedComposition:
    def __init__(self, runtime, *, name: str | None = None, version: str | None = None,
                 expert_dirs: dict[str, Path] | None = None, info: dict | None = None):
        self.runtime = runtime
        spec = runtime.spec
        self.name = name or spec.name
        self.version = version if version is not None else (str(spec.version) if spec.version else None)
        self.tokenizer = runtime.base.tokenizer
        self.fingerprint = runtime.base.fingerprint
        self.tags: dict[str, list[str]] = {m.name: list(m.domain_tags) for m in spec.members}
        self.expert_dirs = {k: Path(v) for k, v in (expert_dirs or {}).items()}
        self.info = {"router_type": spec.router_type, "selection": spec.selection, **(info or {})}
        self.tokenizer_lock = threading.Lock()

    # -- the model ---------------------------------------------------------------------------------------
    @property
    def model(self):
        return self.runtime.model

    @property
    def batch_class(self):
        """How the engine batches rows: KVBatch (KV-cached, one token gate), unless the model brings its own
        (a ``mot`` composition's MoTBatch)."""
        return getattr(self.model, "batch_class", KVBatch)

    @property
    def members(self) -> list[str]:
        return list(self.runtime.member_names)

    @property
    def max_experts_per_request(self) -> int:
        """The most members one request can use: the retriever's top-m when it narrows, else every member."""
        spec = self.runtime.spec
        if spec.selection != "token" and spec.top_m:
            return min(int(spec.top_m), len(self.members))
        return len(self.members)

    @property
    def top_k(self) -> int:
        return int(self.model.router.top_k)

    def set_top_k(self, k: int) -> None:
        self.model.router.top_k = k

    def set_withdrawn(self, names: set[str]) -> None:
        self.runtime.set_withdrawn(names)

    def close(self) -> None:
        self.runtime.close()

    # -- planning ------------------------------------------------------------------------------------------
    def check_names(self, sel: Selection) -> None:
        """Unknown names are errors (cheap; runs at submit so the HTTP layer answers 400 at once)."""
        known = self.members
        for field_name, names in (("include", sel.include or []), ("exclude", sel.exclude)):
            bad = [n for n in names if n not in known]
            if bad:
                raise UnknownMemberError(
                    f"experts.{field_name} names unknown expert(s) {bad}; this composition has {sorted(known)}",
                    detail={"field": f"experts.{field_name}", "unknown": bad, "members": sorted(known)})

    def plan_row(self, prompt: str, sel: Selection, withdrawn: set[str]) -> RowPlan:
        """One request's plan; its names were checked at submit (``check_names``), so not again here."""
        plan = self.runtime.plan([prompt], include=sel.include, exclude=sel.exclude or None, tags=sel.tags,
                                 exclude_tags=sel.exclude_tags or None, withdrawn=set(withdrawn),
                                 check_names=False)
        return RowPlan(allowed=plan.allowed[0].clone(), candidates=list(plan.candidates[0]),
                       notes=list(plan.notes[0]),
                       fixed=plan.fixed_weights[0].clone() if plan.fixed_weights is not None else None,
                       scores=dict(plan.scores[0]))

    def mask_of(self, names) -> torch.Tensor:
        """[N] bool of these member names (names outside the composition are ignored)."""
        names = set(names)
        return torch.tensor([n in names for n in self.members], dtype=torch.bool)

    # -- text ------------------------------------------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Completions add the tokenizer's special tokens (as HF and vLLM do); chat prompts already hold them."""
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict]) -> str:
        with self.tokenizer_lock:
            if getattr(self.tokenizer, "chat_template", None):
                return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # a base without a chat template (the tiny test models): a plain, documented fallback
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    @property
    def vocab_size(self) -> int:
        return int(self.model.base_model.config.vocab_size)

    def eos_ids(self) -> set[int]:
        ids: set[int] = set()
        cfg = getattr(self.model.base_model, "generation_config", None)
        for src in (getattr(cfg, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(i) for i in src)
        return ids

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "members": self.members, "tags": self.tags,
                "top_k": self.top_k, **self.info}


def load_served(composition_dir: str | Path, expert_dirs, base, *, name: str | None = None,
                version: str | None = None, missing: str = "error") -> ServedComposition:
    """A stored composition package plus its members' packages (a dict, or one dir with a subdir per member).
    ``missing="drop"`` serves without members that have no package (withdrawn before the server started)."""
    from expertmesh.compose.runtime import CompositionRuntime, resolve_expert_dirs
    from expertmesh.compose.spec import read_composition

    spec, _ = read_composition(composition_dir)
    dirs = resolve_expert_dirs(spec.member_names, expert_dirs)
    runtime = CompositionRuntime.load(composition_dir, dirs, base, missing=missing, lazy=True)
    return ServedComposition(runtime, name=name, version=version if version is not None else
                             (str(spec.version) if spec.version else None), expert_dirs=dirs,
                             info={"source": str(composition_dir), "load_notes": list(runtime.notes)})


def from_expert_dirs(name: str, base, expert_dirs: dict[str, Path], *, router_type: str = "domain",
                     top_k: int = 2, **options) -> ServedComposition:
    """A composition built in memory from expert packages (no stored composition; tests, local experiments)."""
    from expertmesh.compose.build import build_composition, load_members
    from expertmesh.compose.runtime import CompositionRuntime

    spec, tensors = build_composition(name, expert_dirs, router_type, base=base, top_k=top_k, **options)
    experts = load_members(expert_dirs, base.fingerprint)
    runtime = CompositionRuntime(spec, tensors, base, experts)
    return ServedComposition(runtime, name=name, expert_dirs=expert_dirs, info={"source": "expert packages"})
