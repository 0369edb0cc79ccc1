"""Per-request routing plans: which members a request may use (opt-in/opt-out), which the retriever picked.

Three opt-out levels meet here, and all end as one boolean mask per request:
  owner withdrawal (registry, global)   -> ``withdrawn`` names, set on the runtime or passed per call
  composition membership                -> the members themselves (a non-member is an unknown name)
  request include/exclude and filters   -> include, exclude, tags, exclude_tags, licences
A masked member gets -inf in every gate, so it takes exactly zero weight (see mixture/gate.py); with the
public path always present, the output equals that of a composition that never held it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from expertmesh.compose.selector import PilotIndex, sequence_weights, top_m
from expertmesh.compose.spec import CompositionSpec
from expertmesh.errors import UnknownMemberError

FALLBACK_NOTE = "all experts excluded: answered by the public base"


@dataclass
class RoutingPlan:
    """What each request of a batch may use. ``allowed`` columns follow ``members`` (the composition order)."""

    members: list[str]
    allowed: torch.Tensor                          # [B, N] bool
    candidates: list[list[str]]                    # per request, best first when the retriever ran
    scores: list[dict[str, float]]                 # retriever scores of the allowed members (empty if none ran)
    notes: list[list[str]]
    fixed_weights: torch.Tensor | None = None      # [B, N+1] sequence-level weights (selection "sequence")
    selection: str = "token"
    fallback: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.allowed.shape[0])

    def expand(self, batch: int) -> "RoutingPlan":
        """A one-request plan repeated ``batch`` times (a plan for one prompt used on several sequences)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"plan is for {len(self)} requests, the batch has {batch}")
        fw = self.fixed_weights.expand(batch, -1) if self.fixed_weights is not None else None
        return RoutingPlan(self.members, self.allowed.expand(batch, -1), self.candidates * batch,
                           self.scores * batch, self.notes * batch, fw, self.selection, self.fallback * batch)

    def row(self, b: int) -> dict:
        return {"candidates": list(self.candidates[b]), "scores": dict(self.scores[b]), "notes": list(self.notes[b]),
                "selection": self.selection, "fallback": bool(self.fallback[b]) if self.fallback else False,
                **({"fixed_weights": {n: round(float(self.fixed_weights[b, j + 1]), 6)
                                      for j, n in enumerate(self.members) if float(self.fixed_weights[b, j + 1]) > 0}}
                   if self.fixed_weights is not None else {})}


def _check_known(members: list[str], names: Iterable[str] | None, what: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [n for n in names if n not in members]
    if unknown:
        raise UnknownMemberError(f"{what} names unknown expert(s) {unknown}; this composition has {members}",
                                 detail={"unknown": unknown, "members": members})
    return names


def policy_mask(spec: CompositionSpec, *, include=None, exclude=None, tags=None, exclude_tags=None, licences=None,
                withdrawn: Iterable[str] = (), check_names: bool = True) -> tuple[np.ndarray, list[str]]:
    """[N] bool of members a request may use before selection, plus notes on why members were dropped.
    ``check_names=False``: the caller already refused unknown names (the serving engine, at submit)."""
    members = spec.member_names
    known = _check_known if check_names else (lambda _m, names, _w: [names] if isinstance(names, str)
                                              else list(names or []))
    include = known(members, include, "include") if include is not None else None
    exclude = set(known(members, exclude, "exclude"))
    withdrawn = set(withdrawn)
    tags = set([tags] if isinstance(tags, str) else tags) if tags else None
    exclude_tags = set([exclude_tags] if isinstance(exclude_tags, str) else exclude_tags or [])
    licences = set([licences] if isinstance(licences, str) else licences) if licences else None
    ok = np.ones(len(members), dtype=bool)
    notes: list[str] = []
    for j, m in enumerate(spec.members):
        why = None
        if include is not None and m.name not in include:
            why = ""                                   # simply not opted in: no note
        elif m.name in exclude:
            why = ""
        elif m.name in withdrawn:
            why = f"{m.name} is withdrawn by its owner"
        elif tags is not None and not tags & set(m.domain_tags):
            why = f"{m.name} has none of the tags {sorted(tags)}" if include is not None else ""
        elif exclude_tags & set(m.domain_tags):
            why = f"{m.name} excluded by tag {sorted(exclude_tags & set(m.domain_tags))}"
        elif licences is not None and m.licence not in licences:
            why = f"{m.name} excluded: licence {m.licence!r} not in {sorted(licences)}"
        if why is not None:
            ok[j] = False
            if why:
                notes.append(why)
    return ok, notes


def make_plan(spec: CompositionSpec, prompts: list[str], *, index: PilotIndex | None, embed=None,
              embeddings: np.ndarray | None = None, withdrawn: Iterable[str] = (), selection: str | None = None,
              check_names: bool = True, **filters) -> RoutingPlan:
    """Policy masks, then (selection "both"/"sequence") the retriever's top-m among the allowed members.

    ``selection`` overrides the composition's policy for this call (e.g. "token" for single-expert baselines)."""
    members = spec.member_names
    n, batch = len(members), len(prompts)
    base_ok, base_notes = policy_mask(spec, withdrawn=withdrawn, check_names=check_names, **filters)
    allowed = np.repeat(base_ok[None], batch, 0)
    notes = [list(base_notes) for _ in range(batch)]
    scores: list[dict[str, float]] = [{} for _ in range(batch)]
    candidates = [[members[j] for j in range(n) if base_ok[j]] for _ in range(batch)]
    fixed = None
    selection = selection or spec.selection
    if selection not in ("token", "sequence", "both"):
        raise ValueError(f"selection={selection!r} is not one of 'token', 'sequence', 'both'")
    if selection != "token" and index is None:
        for b in range(batch):
            notes[b].append("no pilots in this composition: token-level routing over all allowed experts")
        selection = "token"
    if selection != "token" and base_ok.any():
        if embeddings is None:
            embeddings = embed(list(prompts))
        s = index.scores(embeddings)                                         # [B, N]
        fixed = np.zeros((batch, n + 1), dtype=np.float32)
        for b in range(batch):
            eligible = base_ok if spec.min_score is None else base_ok & (s[b] >= spec.min_score)
            if base_ok.any() and not eligible.any():
                notes[b].append(f"no allowed expert's retriever score reached min_score={spec.min_score} "
                                f"(best {float(np.nanmax(np.where(base_ok, s[b], np.nan))):.3f})")
            chosen = top_m(s[b], eligible, spec.top_m)
            allowed[b] = False
            allowed[b, chosen] = True
            candidates[b] = [members[j] for j in chosen]
            scores[b] = {members[j]: round(float(s[b, j]), 6) for j in range(n) if base_ok[j] and np.isfinite(s[b, j])}
            fixed[b] = sequence_weights(s[b], chosen, spec.score_temperature, n)
    elif selection == "sequence":
        fixed = np.zeros((batch, n + 1), dtype=np.float32)
        fixed[:, 0] = 1.0
    fallback = [not allowed[b].any() for b in range(batch)]
    for b in range(batch):
        if fallback[b]:
            notes[b].append(FALLBACK_NOTE)
    return RoutingPlan(members=members, allowed=torch.from_numpy(allowed), candidates=candidates, scores=scores,
                       notes=notes, fixed_weights=torch.from_numpy(fixed) if selection == "sequence" else None,
                       selection=selection, fallback=fallback)
