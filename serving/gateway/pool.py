"""WorkerPool: which vLLM worker serves a request, which adapters each one holds, and who is in rotation.

    pool = WorkerPool(["http://w1:8200", "http://w2:8200"], max_adapters=4)
    lease = await pool.acquire("law@3", package_dir, expert="law")    # loads it where needed
    ... stream from lease.worker.client with model=lease.model ...
    pool.release(lease)

Choice of worker, in order (only workers in rotation, i.e. healthy and not quarantined):
  1. affinity: a worker that already holds (or is loading) the adapter, the least busy first;
  2. a worker with a free adapter slot (at most ``max_adapters`` per worker, loads in flight counted);
  3. a worker whose least recently used idle adapter can be unloaded to make room;
  4. none: NoWorkerError (503, Retry-After) - every slot holds an adapter that a running request uses.
The public base (adapter None) goes to the least busy worker.

State changes and why:
  - a request that cannot reach a worker, or a stream that breaks, marks it unhealthy (``mark_failed``); the
    health loop (``check_health``) probes /health and brings it back, re-reading its adapters from /v1/models;
  - ``withdraw(adapters)`` (called from the registry watcher's thread) blocks the adapters, unloads them from
    every worker and verifies each unload (serving/gateway/worker.py: verify_unloaded); a worker that cannot
    confirm is quarantined: out of rotation until the health loop has seen it down and up again (a restart,
    which empties a vLLM worker's adapters) and its /v1/models lists none of the blocked adapters.
Pool state is read by the request path (event loop) and the watcher thread, so it sits behind one lock;
nothing awaits while holding it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from expertmesh.errors import ExpertWithdrawnError
from serving.gateway.errors import NoWorkerError, WorkerError
from serving.gateway.worker import WorkerClient, verify_unloaded

log = logging.getLogger("expertmesh.gateway")


@dataclass
class Worker:
    url: str
    client: WorkerClient
    healthy: bool = True
    quarantine: str | None = None            # why it is out of rotation until it restarts
    seen_down: bool = False                  # quarantined, and seen down since (a restart is under way)
    adapters: "OrderedDict[str, None]" = field(default_factory=OrderedDict)   # least recently used first
    loading: set[str] = field(default_factory=set)
    in_use: Counter = field(default_factory=Counter)
    inflight: int = 0
    last_error: str | None = None

    @property
    def in_rotation(self) -> bool:
        return self.healthy and self.quarantine is None

    def describe(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "in_rotation": self.in_rotation,
                "quarantine": self.quarantine, "adapters": list(self.adapters), "inflight": self.inflight,
                "last_error": self.last_error}


@dataclass
class Lease:
    worker: Worker
    adapter: str | None
    model: str                               # the name sent to the worker: the adapter, or its base


class WorkerPool:
    def __init__(self, urls: list[str], *, max_adapters: int = 4, base_model: str = "base",
                 timeout_s: float = 60.0, connect_timeout_s: float = 5.0, api_key: str | None = None):
        if not urls:
            raise ValueError("the vllm backend needs at least one --worker URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"--worker URLs repeat: {urls}")
        self.workers = [Worker(u.rstrip("/"), WorkerClient(u, timeout_s=timeout_s,
                                                           connect_timeout_s=connect_timeout_s, api_key=api_key))
                        for u in urls]
        self.max_adapters, self.base_model = max_adapters, base_model
        self.blocked: set[str] = set()       # withdrawn adapters: never loaded, never leased
        self.unload_reports: list[dict] = []
        self.counters: Counter = Counter()   # adapter_loads, adapter_evictions, quarantined
        self._lock = threading.Lock()
        self._loads: dict[tuple[str, str], asyncio.Future] = {}

    # -- leasing -----------------------------------------------------------------------------------------
    async def acquire(self, adapter: str | None, package: Path | None, *, expert: str | None = None,
                      avoid: frozenset[str] = frozenset()) -> Lease:
        """A worker for one request (adapter None: the public base), its adapter loaded there."""
        if adapter is None:
            with self._lock:
                w = self._least_busy(self._rotation(avoid))
                w.inflight += 1
            return Lease(w, None, self.base_model)
        with self._lock:
            if adapter in self.blocked:
                raise ExpertWithdrawnError(f"expert {expert!r} was withdrawn by its owner",
                                           detail={"expert": expert})
            w, victim = self._place(adapter, avoid)
            pending = self._loads.get((w.url, adapter))
            mine = None
            if pending is None and adapter not in w.adapters:     # this request loads it; others wait on it
                mine = self._loads[(w.url, adapter)] = asyncio.get_running_loop().create_future()
            w.in_use[adapter] += 1           # reserved now, so no eviction can pick it while we load
            w.inflight += 1
        try:
            if victim is not None:
                self.counters["adapter_evictions"] += 1
                await w.client.unload_adapter(victim)
            if mine is not None:
                await self._load(w, adapter, package, expert, mine)
            elif pending is not None:
                await asyncio.shield(pending)
        except BaseException:
            self._unreserve(w, adapter)
            raise
        with self._lock:
            if adapter in self.blocked:      # withdrawn while we were loading: the watcher may have missed it
                blocked = True
            else:
                blocked = False
                w.adapters.move_to_end(adapter)
        if blocked:
            self._unreserve(w, adapter)
            await self._drop(w, adapter)
            raise ExpertWithdrawnError(f"expert {expert!r} was withdrawn by its owner", detail={"expert": expert})
        return Lease(w, adapter, adapter)

    def release(self, lease: Lease) -> None:
        self._unreserve(lease.worker, lease.adapter)

    def forget(self, w: Worker, adapter: str | None) -> None:
        """The worker no longer holds ``adapter`` (it answered 404 for it): the next lease loads it again."""
        with self._lock:
            if adapter is not None:
                w.adapters.pop(adapter, None)

    def _unreserve(self, w: Worker, adapter: str | None) -> None:
        with self._lock:
            w.inflight -= 1
            if adapter is not None:
                w.in_use[adapter] -= 1
                if w.in_use[adapter] <= 0:
                    del w.in_use[adapter]

    async def _load(self, w: Worker, adapter: str, package: Path | None, expert: str | None,
                    fut: asyncio.Future) -> None:
        try:
            await w.client.load_adapter(adapter, package, expert=expert or adapter)
            with self._lock:
                w.adapters[adapter] = None
            self.counters["adapter_loads"] += 1
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()                  # retrieved: waiting requests re-raise it, nobody logs it twice
            raise
        finally:
            with self._lock:
                w.loading.discard(adapter)
            self._loads.pop((w.url, adapter), None)

    async def _drop(self, w: Worker, adapter: str) -> None:
        try:
            await w.client.unload_adapter(adapter)
        except WorkerError as e:
            log.warning("could not unload %s from %s: %s", adapter, w.url, e)
        with self._lock:
            w.adapters.pop(adapter, None)

    # -- choosing (under the lock) -----------------------------------------------------------------------
    def _rotation(self, avoid: frozenset[str]) -> list[Worker]:
        ws = [w for w in self.workers if w.in_rotation and w.url not in avoid]
        if not ws:
            raise NoWorkerError("no vLLM worker is in rotation (down, quarantined or already tried); retry "
                                "later", detail={"workers": [w.describe() for w in self.workers]})
        return ws

    @staticmethod
    def _least_busy(ws: list[Worker]) -> Worker:
        return min(ws, key=lambda w: (w.inflight, len(w.adapters)))

    def _place(self, adapter: str, avoid: frozenset[str]) -> tuple[Worker, str | None]:
        """(worker, adapter to evict first or None); reserves a slot on the worker for a new load."""
        ws = self._rotation(avoid)
        have = [w for w in ws if adapter in w.adapters or adapter in w.loading]
        if have:
            return self._least_busy(have), None
        room = [w for w in ws if len(w.adapters) + len(w.loading) < self.max_adapters]
        if room:
            w = self._least_busy(room)
            w.loading.add(adapter)
            return w, None
        idle = [(w, a) for w in ws for a in w.adapters if not w.in_use.get(a)]
        if not idle:
            raise NoWorkerError(f"every worker holds {self.max_adapters} adapters that running requests use; "
                                "retry shortly", detail={"max_adapters": self.max_adapters})
        w = self._least_busy([w for w, _ in idle])
        victim = next(a for a in w.adapters if not w.in_use.get(a))     # least recently used idle one
        del w.adapters[victim]
        w.loading.add(adapter)
        return w, victim

    # -- health ------------------------------------------------------------------------------------------
    def mark_failed(self, w: Worker, reason: str) -> None:
        with self._lock:
            if w.healthy:
                log.warning("worker %s out of rotation: %s", w.url, reason)
            w.healthy, w.last_error = False, reason

    async def check_health(self) -> None:
        """One probe of every worker (the app runs it every ``health_interval_s``)."""
        results = await asyncio.gather(*(w.client.health() for w in self.workers))
        for w, ok in zip(self.workers, results):
            if not ok:
                with self._lock:
                    w.healthy = False
                    w.seen_down = w.quarantine is not None
                continue
            if w.healthy and w.quarantine is None:
                continue
            await self._rejoin(w)

    async def _rejoin(self, w: Worker) -> None:
        """A worker answers again: read what it holds; a quarantined one comes back only after a restart."""
        try:
            ids = await w.client.model_ids()
        except WorkerError as e:
            self.mark_failed(w, str(e))
            return
        with self._lock:
            held = ids - {self.base_model}
            if w.quarantine is not None and not (w.seen_down and not held & self.blocked):
                w.healthy = True              # alive, but still out of rotation
                return
            if w.quarantine is not None:
                log.info("worker %s restarted and holds no withdrawn adapter: back in rotation", w.url)
            was_in_rotation = w.in_rotation
            w.quarantine, w.seen_down, w.healthy, w.last_error = None, False, True, None
            if was_in_rotation:       # the start-up sync: add what it already held, keep loads made meanwhile
                for a in sorted(held - self.blocked - set(w.adapters)):
                    w.adapters[a] = None
                    w.adapters.move_to_end(a, last=False)
            else:                     # back from down (a restart empties a worker): what it lists now
                w.adapters = OrderedDict((a, None) for a in sorted(held - self.blocked))

    async def sync_all(self) -> None:
        """At start: every worker's adapters as its /v1/models lists them (unreachable ones start unhealthy)."""
        for w in self.workers:
            if await w.client.health():
                await self._rejoin(w)
            else:
                self.mark_failed(w, "no answer to /health at start")

    # -- withdrawal ----------------------------------------------------------------------------------------
    def block(self, adapters: set[str]) -> None:
        """Adapters that must not be leased or loaded any more (set first, before any unload)."""
        with self._lock:
            self.blocked |= set(adapters)

    def unblock(self, adapters: set[str]) -> None:
        with self._lock:
            self.blocked -= set(adapters)

    def withdraw(self, adapters: set[str]) -> dict[str, dict[str, str | None]]:
        """Block, unload from every worker and verify (synchronous; the watcher's thread). Returns, per worker,
        per adapter, None (confirmed gone) or why it could not be confirmed (the worker is then quarantined)."""
        self.block(adapters)
        report: dict[str, dict[str, str | None]] = {}
        for w in self.workers:
            report[w.url] = {}
            for a in sorted(adapters):
                why = verify_unloaded(w.url, a)
                report[w.url][a] = why
                with self._lock:
                    if why is None:
                        w.adapters.pop(a, None)
                    else:
                        log.error("worker %s cannot confirm the unload of withdrawn %s (%s): quarantined "
                                  "until it restarts", w.url, a, why)
                        w.quarantine, w.seen_down = f"unconfirmed unload of {a}: {why}", False
                        self.counters["quarantined"] += 1
        self.unload_reports.append(report)
        del self.unload_reports[:-20]
        return report

    def describe(self) -> list[dict]:
        with self._lock:
            return [w.describe() for w in self.workers]

    async def aclose(self) -> None:
        for w in self.workers:
            await w.client.aclose()
