"""ResidentSet: at most ``capacity`` experts' LoRA factors in memory; the rest are reloaded from disk on use.

The gate of a composition spans all N members (router rows are [L, N, d], ~70 kB per member for SmolLM2),
but the LoRA factors are what cost memory (~3.5 MiB per r=16 q,k,v,o expert; ~3.5 GiB for a thousand). So
every MixtureLinear is given K *slots* instead of N experts (S-LoRA's unified pool in miniature):

    slot_index [K]                 member index held by each slot (N = empty slot -> weight 0)
    w_slots = [w, 0][..., slot_index]   gate weights [B, T, N] gathered to the slots [B, T, K]
    y = W x + ((x @ A_slots) * w_slots) @ B_slots      A_slots [in, K*r], B_slots [K*r, out]

The engine calls ``ensure(names)`` before each forward with every expert any row of the batch may use, so
an expert that can take gate mass is always resident; the least recently used others are evicted (their
factors are dropped, and ``ExpertWeights.lora`` of an evicted member is emptied until it is reloaded).
When one request alone needs more experts than ``capacity`` the pool grows for it and shrinks afterwards:
correctness comes before the bound, and ``stats()['over_capacity']`` counts it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from expertmesh.mixture.layers import MixtureLinear
from expertmesh.mixture.lora_io import ExpertWeights

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


class _SlotView:
    """Stands in for the RouterState in each MixtureLinear: the same gate weights, gathered to slots."""

    def __init__(self, router, n_members: int):
        self.router = router
        self.n = n_members
        self.index = torch.zeros(0, dtype=torch.long)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def expert_weights(self, layer: int) -> torch.Tensor | None:
        w = self.router.expert_weights(layer)
        if w is None or len(self.index) == 0:
            return None
        hit = self._cache.get(layer)
        if hit is not None and hit[0] is w:          # four projections per layer read the same weights
            return hit[1]
        out = torch.cat([w, w.new_zeros(*w.shape[:-1], 1)], -1).index_select(-1, self.index)
        self._cache[layer] = (w, out)
        return out


class ResidentSet:
    def __init__(self, composed, capacity: int, loader: Callable[[str], Factors] | None):
        """``loader(name)`` returns an evicted expert's factors again (None: eviction is disabled)."""
        self.composed = composed
        self.capacity = capacity
        self.loader = loader
        self.members = [e.name for e in composed.experts]
        self._experts: dict[str, ExpertWeights] = {e.name: e for e in composed.experts}
        self._modules: dict[str, MixtureLinear] = {
            path: m for path, m in composed.base_model.named_modules() if isinstance(m, MixtureLinear)}
        self._view = _SlotView(composed.router, len(self.members))
        for m in self._modules.values():
            m.state = self._view
        self._lru: OrderedDict[str, None] = OrderedDict()    # resident names, least recently used first
        self._slots: list[str] = []
        self._lock = threading.Lock()
        self.loads = self.evictions = self.over_capacity = 0
        first = self.members[:capacity] if loader is not None else self.members
        for name in self.members:
            if name in first:
                self._lru[name] = None
            else:
                self._release(name)
        self._restack(list(self._lru))

    # -- public -----------------------------------------------------------------------------------------
    @property
    def resident(self) -> list[str]:
        return list(self._lru)

    def ensure(self, needed: set[str]) -> None:
        """Make every name in ``needed`` resident (loading it if evicted); evict LRU others above capacity."""
        with self._lock:
            needed = {n for n in needed if n in self._experts}
            missing = [n for n in self.members if n in needed and n not in self._lru]
            for n in needed & set(self._lru):
                self._lru.move_to_end(n)
            if not missing and len(self._lru) <= self.capacity:
                return
            for n in missing:
                self._experts[n].lora = self.loader(n)
                self.loads += 1
                self._lru[n] = None
            if len(needed) > self.capacity:
                self.over_capacity += 1
            while len(self._lru) > max(self.capacity, len(needed)):
                victim = next(n for n in self._lru if n not in needed)
                del self._lru[victim]
                self._release(victim)
                self.evictions += 1
            self._restack(list(self._lru))

    def evict(self, names: set[str]) -> None:
        """Drop these experts now (withdrawn: their weights should not stay in memory)."""
        with self._lock:
            gone = [n for n in names if n in self._lru]
            for n in gone:
                del self._lru[n]
                if self.loader is not None:
                    self._release(n)
                self.evictions += 1
            if gone:
                self._restack(list(self._lru))

    def stats(self) -> dict:
        return {"capacity": self.capacity, "resident": len(self._lru), "members": len(self.members),
                "loads": self.loads, "evictions": self.evictions, "over_capacity": self.over_capacity}

    # -- internals --------------------------------------------------------------------------------------
    def _release(self, name: str) -> None:
        if self.loader is not None:
            self._experts[name].lora = {}

    def _restack(self, slots: list[str]) -> None:
        """Give every wrapped module the factors of the experts in ``slots`` (member order kept)."""
        order = {n: i for i, n in enumerate(self.members)}
        slots = sorted(slots, key=order.__getitem__)
        self._slots = slots
        for path, module in self._modules.items():
            module.set_factors([
                (self._experts[n].lora[path][0], self._experts[n].lora[path][1], self._experts[n].scaling)
                if path in self._experts[n].lora else None for n in slots])
        self._view.index = torch.tensor([order[n] for n in slots], dtype=torch.long)
        self._view._cache.clear()


def package_loader(expert_dirs: dict[str, Path], fingerprint: str | None) -> Callable[[str], Factors]:
    """Reload an expert's LoRA factors from its (verified) package directory."""
    from expertmesh.mixture.lora_io import load_expert

    def load(name: str) -> Factors:
        return load_expert(expert_dirs[name], expected_fingerprint=fingerprint).lora
    return load
