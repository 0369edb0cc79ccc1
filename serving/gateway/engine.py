"""GatewayEngine: the native Engine's interface (submit / apply_withdrawn / stats ...) over vLLM workers.

Because it answers the same calls as expertmesh.serving.engine.Engine, the native HTTP app (serving/app.py:
create_app) serves it unchanged: the same /v1/completions and /v1/chat/completions (streaming), the same
request schema, experts include/exclude/tags, return_routing, --api-key, /healthz, /readyz, /metrics and the
same error bodies. The registry Watcher drives it the same way (apply_withdrawn, set_fail_closed).

One request, on the event loop (``submit`` starts a task; its handle's ``cancel`` stops it). Its ``start``
event goes out with the first token, so that a refused adapter (409), no worker (503) or a worker that
sends nothing in time (504) is the HTTP status of the answer, streaming or not:
  1. route: the retriever picks one expert at sequence level (serving/gateway/router.py), or the public base;
  2. lease a worker (serving/gateway/pool.py: affinity, bounded adapters, loading the package if needed);
     a worker that cannot be reached before any token is marked failed and the next one is tried;
  3. stream POST /v1/completions with the prompt as token ids (the gateway renders chat templates and
     tokenises exactly as the native server does) and ``return_token_ids``; relay each delta.
Withdrawal mid-stream: ``apply_withdrawn`` swaps the withdrawn set under ``_emit_lock``, and every delta is
checked and emitted under the same lock, so once apply_withdrawn returns no token of a withdrawn expert
reaches a client. The request's stream from that worker is closed (vLLM aborts it), the request is routed
again without the expert, and generation continues from prompt + the tokens produced so far (token ids:
exact for greedy decoding), as the native engine re-plans a row. Then every worker unloads the expert and
the unload is verified (pool.withdraw); a worker that cannot confirm it is quarantined until it restarts.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from expertmesh.errors import ExpertMeshError, ExpertWithdrawnError
from expertmesh.serving.errors import NotReadyError, UnsupportedParameterError
from expertmesh.serving.requests import Event, GenerationRequest, RequestHandle, check_context
from serving.gateway.errors import WorkerError
from serving.gateway.pool import WorkerPool
from serving.gateway.router import GatewayRouter, RouteChoice
from serving.gateway.worker import StaleAdapterError

log = logging.getLogger("expertmesh.gateway")


class GatewayComposition:
    """What the HTTP app reads from ``engine.comp``: name, version, members, tags, the text side."""

    def __init__(self, router: GatewayRouter, tokenizer, *, name: str | None = None, version: str | None = None,
                 vocab_size: int | None = None):
        from expertmesh.serving.composition import ServedComposition

        spec = router.spec
        self.router, self.tokenizer = router, tokenizer
        self.name = name or spec.name
        self.version = version if version is not None else (str(spec.version) if spec.version else None)
        self.tags = {m.name: list(m.domain_tags) for m in spec.members}
        self.top_k = 1                         # one adapter per sequence on this backend
        self.vocab_size = int(vocab_size or len(tokenizer))
        self.tokenizer_lock = threading.Lock()
        self.fingerprint = spec.base_fingerprint
        # the native composition's text functions, shared rather than copied (same tokens, same template)
        self._text = ServedComposition

    @property
    def members(self) -> list[str]:
        return self.router.members

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._text.encode(self, text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        return self._text.decode(self, ids)

    def chat_prompt(self, messages: list[dict]) -> str:
        return self._text.chat_prompt(self, messages)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "members": self.members, "tags": self.tags,
                "top_k": self.top_k, "backend": "vllm", "router_type": self.router.spec.router_type}


@dataclass
class GatewayOptions:
    max_context: int = 2048
    health_interval_s: float = 2.0
    max_queue: int = 256                   # requests in flight beyond this get 503


class GatewayEngine:
    def __init__(self, comp: GatewayComposition, pool: WorkerPool, options: GatewayOptions | None = None):
        self.comp, self.pool = comp, pool
        self.router = comp.router
        self.options = options or GatewayOptions()
        self._withdrawn: frozenset[str] = frozenset()
        self._fail_closed = False
        self.epoch = 0
        self._emit_lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._health: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self.counters = collections.Counter()
        self.withdrawal_log: list[dict] = []

    # -- lifecycle (called from the app's lifespan, on its event loop) ------------------------------------
    def start(self) -> "GatewayEngine":
        self._loop = asyncio.get_running_loop()
        self._health = self._loop.create_task(self._health_loop())
        self._ready = True
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._ready = False
        for t in list(self._tasks):
            t.cancel()
        if self._health is not None:
            self._health.cancel()

    async def _health_loop(self) -> None:
        await self.pool.sync_all()
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            try:
                await self.pool.check_health()
            except Exception:                      # a probe bug must not end health checking
                log.exception("health check failed")

    @property
    def ready(self) -> bool:
        return self._ready and any(w["in_rotation"] for w in self.pool.describe())

    @property
    def withdrawn(self) -> frozenset[str]:
        return self._withdrawn

    # -- requests --------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, sink) -> RequestHandle:
        if not self._ready:
            raise NotReadyError("the gateway is not running")
        if request.trace_tokens:
            raise UnsupportedParameterError('return_routing="tokens" needs token-level gating, which the vllm '
                                            "backend does not have; use return_routing=true",
                                            detail={"field": "return_routing"})
        check_context(request, self.options.max_context)
        if len(self._tasks) >= self.options.max_queue:
            from expertmesh.serving.errors import OverloadedError
            raise OverloadedError(f"{len(self._tasks)} requests are in flight; retry shortly",
                                  detail={"retry_after_s": 1})
        self.router.check(request.selection)     # unknown names: 400 now, before anything streams
        handle = RequestHandle(request, sink)
        task = asyncio.get_running_loop().create_task(self._serve(handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        handle.cancel = task.cancel               # the client went away: stop relaying, close the stream
        return handle

    async def _serve(self, h: RequestHandle) -> None:
        try:
            # the retriever embeds the prompt (MiniLM, ~10-50 ms on a CPU): off the event loop, so 16 requests
            # arriving together do not queue behind each other's embeddings
            choice = await asyncio.to_thread(self._route, h.request)
            await self._relay(h, choice)
        except asyncio.CancelledError:
            self.counters["cancelled"] += 1
            raise
        except ExpertMeshError as e:
            self.counters["errors"] += 1
            h.emit(Event("error", error=e))
        except Exception as e:                    # a bug: the request fails with a 5xx body, the loop lives on
            log.exception("gateway request failed")
            err = ExpertMeshError(f"internal gateway error ({type(e).__name__}); see the gateway log")
            err.code = "internal_error"
            h.emit(Event("error", error=err))

    async def _relay(self, h: RequestHandle, choice: RouteChoice) -> None:
        req, p = h.request, h.request.params
        generated: list[int] = []
        segments: list[dict] = []
        notes: list[str] = []
        t_first = None
        finish = None
        avoid: set[str] = set()
        attempts = 0
        notes += choice.routing["notes"]
        started = False          # "start" goes out with the first token: a refusal before it is an HTTP status
        while finish is None:
            if len(generated) >= p.max_tokens:     # cut right after the last token: nothing left to continue
                finish = "length"
                break
            attempts += 1
            if attempts > 2 * len(self.pool.workers) + 4:     # every worker tried, reroutes included
                raise WorkerError(f"gave up after {attempts - 1} attempts on {len(self.pool.workers)} worker(s)",
                                  detail={"notes": notes})
            try:
                lease = await self.pool.acquire(choice.adapter, choice.package, expert=choice.expert,
                                                avoid=frozenset(avoid))
            except ExpertWithdrawnError:
                choice = self._reroute(req, choice, notes, len(generated))
                continue
            seg = {"expert": choice.expert, "worker": lease.worker.url, "tokens": 0}
            segments.append(seg)
            body = {"model": lease.model, "prompt": list(req.prompt_ids) + generated,
                    "max_tokens": p.max_tokens - len(generated), "temperature": p.temperature, "top_p": p.top_p,
                    "ignore_eos": p.ignore_eos, "return_token_ids": True, "skip_special_tokens": True,
                    "stream_options": {"include_usage": False}}
            if p.seed is not None:
                body["seed"] = p.seed
            if p.stop:
                body["stop"] = list(p.stop)
            cut = False
            try:
                async for chunk in lease.worker.client.stream("/v1/completions", body):
                    for c in chunk.get("choices") or []:
                        with self._emit_lock:       # atomic with apply_withdrawn: see the module docstring
                            if self._lost(choice):
                                cut = True
                                break
                            ids, text = list(c.get("token_ids") or []), c.get("text") or ""
                            generated += ids
                            seg["tokens"] += len(ids)
                            if text:
                                if not started:
                                    started = self._start(h, choice, notes)
                                t_first = t_first or time.monotonic()
                                h.emit(Event("delta", {"text": text, "token": ids[-1] if ids else None,
                                                       "tokens": ids}))
                        if c.get("finish_reason"):
                            finish = "length" if c["finish_reason"] == "length" else "stop"
                    if cut:
                        break
            except StaleAdapterError as e:              # the worker restarted and lost the adapter: reload
                self.pool.forget(lease.worker, choice.adapter)
                notes.append(f"worker {lease.worker.url} had lost the adapter; loaded it again")
                if seg["tokens"]:
                    raise WorkerError(f"{e.message} after {len(generated)} tokens", detail=e.detail) from None
                segments.pop()
                continue
            except WorkerError as e:
                self.pool.mark_failed(lease.worker, str(e))
                if seg["tokens"]:                     # mid-stream: this request fails cleanly
                    raise WorkerError(f"worker {lease.worker.url} failed after {len(generated)} tokens of this "
                                      f"request: {e.message}", detail={**e.detail, "tokens_sent": len(generated)})
                avoid.add(lease.worker.url)          # failover: nothing was sent yet, try another worker
                self.counters["failovers"] += 1
                segments.pop()
                continue
            finally:
                self.pool.release(lease)
            if cut:
                choice = self._reroute(req, choice, notes, len(generated))
                continue
            if finish is None:
                finish = "length" if len(generated) >= p.max_tokens else "stop"
        if not started:
            self._start(h, choice, notes)
        self._done(h, generated, segments, choice, notes, finish, t_first)

    @staticmethod
    def _start(h: RequestHandle, choice: RouteChoice, notes: list[str]) -> bool:
        h.emit(Event("start", {"candidates": choice.routing["candidates"], "notes": list(notes),
                               "prompt_tokens": len(h.request.prompt_ids)}))
        return True

    def _route(self, req: GenerationRequest) -> RouteChoice:
        return self.router.route(req.prompt, req.selection, set(self._withdrawn), fail_closed=self._fail_closed)

    def _lost(self, choice: RouteChoice) -> bool:
        return choice.expert is not None and (choice.expert in self._withdrawn or self._fail_closed)

    def _reroute(self, req, old: RouteChoice, notes: list[str], n_generated: int) -> RouteChoice:
        self.counters["rerouted"] += 1
        why = "fail closed: the registry is unreachable" if self._fail_closed else "withdrawn by its owner"
        new = self._route(req)
        notes.append(f"{old.expert} {why} during this request after {n_generated} tokens; continued on "
                     f"{new.expert or 'the public base'}")
        return new

    def _done(self, h, generated, segments, choice, notes, finish, t_first) -> None:
        now = time.monotonic()
        n = len(generated)
        weights: dict[str, float] = {}
        for s in segments:
            key = s["expert"] or "public"
            weights[key] = weights.get(key, 0.0) + (s["tokens"] / n if n else 1.0 / len(segments))
        experts = sorted((k for k in weights if k != "public" and weights[k] > 0), key=lambda k: -weights[k])
        routing = {"experts": experts, "weights": {k: round(v, 6) for k, v in weights.items()},
                   "candidates": choice.routing["candidates"], "notes": notes, "backend": "vllm",
                   "selection": "sequence", "scores": choice.routing["scores"], "segments": segments}
        self.counters["requests"] += 1
        self.counters["generated_tokens"] += n
        h.emit(Event("done", {"finish_reason": finish, "usage": {
            "prompt_tokens": len(h.request.prompt_ids), "completion_tokens": n,
            "total_tokens": len(h.request.prompt_ids) + n}, "routing": routing,
            "latency_s": now - h.submitted, "ttft_s": (t_first or now) - h.submitted, "routed_tokens": float(n)}))

    # -- control (any thread; the registry watcher calls these) -------------------------------------------
    def apply_withdrawn(self, names: set[str], *, revision: object = None, seen_at: float | None = None) -> None:
        seen_at = seen_at or time.monotonic()
        names = frozenset(n for n in names if n in self.comp.members)
        with self._emit_lock:
            old, self._withdrawn = self._withdrawn, names
            self.epoch += 1
        applied = time.monotonic()
        new, back = names - old, old - names
        adapters = {self.router.adapters[n] for n in new}
        report = self.pool.withdraw(adapters) if adapters else {}
        self.pool.unblock({self.router.adapters[n] for n in back})
        confirmed = all(why is None for per in report.values() for why in per.values())
        self.withdrawal_log.append({"epoch": self.epoch, "withdrawn": sorted(names), "new": sorted(new),
                                    "revision": revision, "seen_to_applied_s": round(applied - seen_at, 4),
                                    "unload_confirmed": confirmed, "unload": report})
        del self.withdrawal_log[:-20]
        log.info("withdrawn set now %s (epoch %d); unload confirmed on every worker: %s", sorted(names),
                 self.epoch, confirmed)

    def set_fail_closed(self, on: bool, reason: str = "") -> None:
        with self._emit_lock:
            if on != self._fail_closed:
                self._fail_closed = on
                self.epoch += 1
        if on:
            log.warning("registry unreachable (%s): serving the public base only", reason)

    def swap(self, builder, *, revision: object = None) -> None:
        log.warning("a new composition version (revision %s) is not loaded live by the vllm backend; restart "
                    "the gateway to serve it", revision)

    # -- introspection ----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        workers = self.pool.describe()
        held = {a for w in workers for a in w["adapters"]}
        return {"ready": self.ready, "running": len(self._tasks), "waiting": 0, "epoch": self.epoch,
                "withdrawn": sorted(self._withdrawn), "fail_closed": self._fail_closed,
                "composition": self.comp.describe(), "workers": workers,
                "resident": {"resident": len(held), "capacity": self.pool.max_adapters * len(workers),
                             "members": len(self.comp.members), "loads": self.pool.counters["adapter_loads"],
                             "evictions": self.pool.counters["adapter_evictions"]},
                "counters": {**self.counters, "workers_in_rotation": sum(w["in_rotation"] for w in workers),
                             "quarantined": self.pool.counters["quarantined"]},
                "withdrawals": list(self.withdrawal_log)}
