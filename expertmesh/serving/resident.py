"""ResidentSet: the LoRA factors of at most K experts in memory, in a fixed pool of K slots; LRU eviction.

The gate of a composition spans all N members (router rows are [L, N, d], ~70 kB per member for SmolLM2),
but the LoRA factors are what cost memory (~3.7 MiB per r=8 q,k,v,o expert; ~3.7 GiB for a thousand). So
every MixtureLinear holds a pool of K *slots* instead of N experts (S-LoRA's unified pool in miniature):

    slot_index [K]                  member index held by each slot (N = empty slot -> weight 0)
    w_slots = [w, 0][..., slot_index]    gate weights [B, T, N] gathered to the slots [B, T, K]
    y = W x + sum over selected (token, slot) pairs of w * B_slot A_slot x        (mixture/sparse.py)

K comes from a memory budget in MB (``budget_mb``; pool bytes = K x the bytes of one slot in every module) or
a count (``capacity``). Loading an expert reads and checks its package (the composition itself was loaded from
signatures only), writes its factors into a free or least-recently-used slot, and keeps no other copy.

The engine calls ``ensure(names)`` before each forward with every expert any row of the batch may use, so an
expert that can take gate mass is always resident. With a count capacity a request needing more experts than
K grows the pool for it (``stats()['over_capacity']``); with a budget the bound is strict, and a composition
whose requests may need more experts than fit is refused when the set is made (``check_fits``).
A package that is missing or corrupt when it is loaded raises PackageError and changes nothing: the engine
fails only the request that needed it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from expertmesh.errors import ConfigError
from expertmesh.mixture.layers import MixtureLinear
from expertmesh.mixture.lora_io import ExpertWeights

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
MB = 1024 * 1024


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


def slot_bytes(modules: dict[str, MixtureLinear], rank: int) -> int:
    """Bytes one expert slot takes across every wrapped module (fp32 A [r, in] and B [out, r])."""
    return sum(4 * rank * (m.base.in_features + m.base.out_features) for m in modules.values())


class ResidentSet:
    def __init__(self, composed, capacity: int, loader: Callable[[str], Factors] | None, *,
                 budget_mb: float | None = None, max_needed: int | None = None):
        """``loader(name)`` returns an expert's factors (None: every member stays loaded, nothing is evicted).
        ``budget_mb`` bounds the pool strictly; ``max_needed`` is the most experts one request may use (the
        retriever's top-m, else N), checked against the budget here."""
        self.composed = composed
        self.loader = loader
        self.members = [e.name for e in composed.experts]
        self._experts: dict[str, ExpertWeights] = {e.name: e for e in composed.experts}
        self._modules: dict[str, MixtureLinear] = {
            path: m for path, m in composed.base_model.named_modules() if isinstance(m, MixtureLinear)}
        self.rank = max((e.manifest.lora.r if e.manifest else e.rank) for e in composed.experts) \
            if composed.experts else 0
        self.slot_bytes = slot_bytes(self._modules, self.rank)
        self.budget_mb = budget_mb
        self.strict = budget_mb is not None and loader is not None
        if self.strict:
            capacity = min(capacity, int(budget_mb * MB // max(self.slot_bytes, 1)))
            check_fits(budget_mb, self.slot_bytes, capacity, max_needed if max_needed is not None
                       else len(self.members))
        elif loader is None:
            capacity = max(capacity, len(self.members))       # nothing can be reloaded: keep everyone
        self.capacity = capacity
        self._view = _SlotView(composed.router, len(self.members))
        composed.resident_set = self                          # who loads this model's expert weights
        for m in self._modules.values():
            m.state = self._view
        self._lru: OrderedDict[str, None] = OrderedDict()     # resident names, least recently used first
        self._slot_of: dict[str, int] = {}
        self._lock = threading.Lock()
        self.loads = self.evictions = self.over_capacity = 0
        self.resident_peak_bytes = 0
        self._allocate(min(capacity, len(self.members)) if self.members else 0)
        for name in [n for n in self.members if self._experts[n].lora][:capacity]:
            self._place(name, self._experts[name].lora)
        for name in self.members:                             # what is not in a slot is not kept in memory
            if self.loader is not None:
                self._experts[name].lora = {}

    # -- public -----------------------------------------------------------------------------------------
    @property
    def resident(self) -> list[str]:
        return list(self._lru)

    def ensure(self, needed: set[str]) -> None:
        """Make every name in ``needed`` resident (loading it if needed); evict LRU others above capacity.

        Every missing expert is read first: a PackageError from one leaves the set as it was."""
        with self._lock:
            needed = {n for n in needed if n in self._experts}
            for n in needed & set(self._lru):
                self._lru.move_to_end(n)
            missing = [n for n in self.members if n in needed and n not in self._lru]
            if not missing:
                while len(self._lru) > max(self.capacity, len(needed)):    # shrink back after a big request
                    self._evict_one(needed)
                return
            if self.loader is None:
                raise ConfigError(f"experts {missing} are not resident and cannot be loaded (no packages)")
            loaded = {n: self.loader(n) for n in missing}
            if len(needed) > self.capacity:
                if self.strict:
                    raise ConfigError(f"a request needs {len(needed)} experts but the memory budget "
                                      f"({self.budget_mb} MB) holds {self.capacity}")
                self.over_capacity += 1
            if len(needed) > self._slots:
                self._grow(len(needed))
            for n in missing:
                if len(self._lru) >= max(self.capacity, len(needed)) or len(self._slot_of) >= self._slots:
                    self._evict_one(needed)
                self._place(n, loaded[n])
                self.loads += 1
            while len(self._lru) > max(self.capacity, len(needed)):
                self._evict_one(needed)

    def evict(self, names: set[str]) -> None:
        """Drop these experts now (withdrawn: their weights should not stay in memory)."""
        with self._lock:
            for n in [n for n in names if n in self._lru]:
                if self.loader is not None:
                    self._free(n)
                    self.evictions += 1

    def stats(self) -> dict:
        return {"capacity": self.capacity, "resident": len(self._lru), "members": len(self.members),
                "loads": self.loads, "evictions": self.evictions, "over_capacity": self.over_capacity,
                "budget_mb": self.budget_mb, "slot_mb": round(self.slot_bytes / MB, 3),
                "resident_mb": round(len(self._lru) * self.slot_bytes / MB, 3),
                "pool_mb": round(self.pool_bytes() / MB, 3),
                "resident_peak_mb": round(self.resident_peak_bytes / MB, 3)}

    def pool_bytes(self) -> int:
        return sum(m.pool_bytes for m in self._modules.values())

    # -- internals --------------------------------------------------------------------------------------
    def _allocate(self, slots: int) -> None:
        self._slots = slots
        for m in self._modules.values():
            m.set_pool(slots, self.rank)
        self._view.index = torch.full((slots,), len(self.members), dtype=torch.long)
        self._view._cache.clear()

    def _grow(self, slots: int) -> None:
        """Count capacity only: a bigger pool with the residents copied over (their slots kept)."""
        old = {path: m._pools for path, m in self._modules.items()}
        index = self._view.index
        self._allocate(slots)
        for path, m in self._modules.items():
            if old[path] is not None:
                k = old[path][0].shape[0]
                m._pools[0][:k], m._pools[1][:k] = old[path][0], old[path][1]
        self._view.index[:len(index)] = index

    def _place(self, name: str, lora: Factors) -> None:
        slot = next(s for s in range(self._slots) if s not in set(self._slot_of.values()))
        e = self._experts[name]
        for path, m in self._modules.items():
            m.write_slot(slot, (lora[path][0], lora[path][1], e.scaling) if path in lora else None)
        self._slot_of[name] = slot
        self._lru[name] = None
        self._view.index[slot] = self.members.index(name)
        self._view._cache.clear()
        self.resident_peak_bytes = max(self.resident_peak_bytes, len(self._lru) * self.slot_bytes)

    def _evict_one(self, needed: set[str]) -> None:
        victim = next((n for n in self._lru if n not in needed), None)
        if victim is None:
            raise RuntimeError("resident set full of needed experts")     # guarded by the capacity checks
        self._free(victim)
        self.evictions += 1

    def _free(self, name: str) -> None:
        slot = self._slot_of.pop(name)
        del self._lru[name]
        for m in self._modules.values():
            m.write_slot(slot, None)
        self._view.index[slot] = len(self.members)
        self._view._cache.clear()
        self._experts[name].lora = {}


def check_fits(budget_mb: float, slot_bytes: int, capacity: int, max_needed: int) -> None:
    """A budget that cannot hold the experts one request may use is refused when the composition is loaded."""
    if capacity < 1 or capacity < max_needed:
        raise ConfigError(
            f"resident_budget_mb={budget_mb} holds {capacity} expert(s) of {slot_bytes / MB:.2f} MB, but one "
            f"request may use {max_needed}; raise the budget to at least {max_needed * slot_bytes / MB:.1f} MB "
            "or serve a retrieve composition with a smaller top_m")


def package_loader(expert_dirs: dict[str, Path], fingerprint: str | None) -> Callable[[str], Factors]:
    """Reload an expert's LoRA factors from its (verified) package directory."""
    from expertmesh.mixture.lora_io import load_expert

    def load(name: str) -> Factors:
        return load_expert(expert_dirs[name], expected_fingerprint=fingerprint).lora
    return load
