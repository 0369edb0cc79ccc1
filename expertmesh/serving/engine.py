"""Engine: continuous batching of concurrent requests over one composition, with live withdrawal.

One worker thread owns the model. Each iteration:
  1. applies control messages (withdrawals, registry staleness, a new composition version),
  2. admits waiting requests up to ``max_batch`` rows: plans each (its own expert mask), prefills them
     together, and merges their KV cache into the running batch (rows join at any step),
  3. runs ONE decode forward for every running row, each row with its own expert mask (``allowed`` [B, N]),
     samples each row with its own parameters, streams the text, and drops finished or cancelled rows.
No request is ever run alone because others differ in opt-outs: heterogeneous masks share the forward.

Withdrawal: ``apply_withdrawn(names)`` (called by the watcher) is applied before the next forward. Rows that
could use a newly withdrawn expert lose it from their mask and their KV cache is recomputed without it (one
prefill over prompt + generated tokens), so every token sampled after the switch is computed as if the
expert never existed; the expert's weights leave the resident set. ``stats()['withdrawals']`` records when
each change was seen and applied; routing per token carries the withdrawal ``epoch`` it was computed under.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import torch

from expertmesh.errors import ExpertMeshError, InternalError, InvalidInputError
from expertmesh.serving.composition import RowPlan, ServedComposition
from expertmesh.serving.errors import NotReadyError, OverloadedError, UnsupportedParameterError
from expertmesh.serving.logprobs import MAX_TOP_LOGPROBS, TokenLogprob, prompt_entries, score
from expertmesh.serving.kvbatch import KVBatch
from expertmesh.serving.requests import Event, GenerationRequest, RequestHandle, RoutingTally, check_context
from expertmesh.serving.resident import ResidentSet, package_loader
from expertmesh.serving.sampling import TextStream, sample_rows
from expertmesh.serving.settings import ServeSettings

log = logging.getLogger("expertmesh.serving")


class _Row:
    def __init__(self, handle: RequestHandle, plan: RowPlan, comp: ServedComposition):
        req = handle.request
        self.handle, self.params = handle, req.params
        self.notes: list[str] = []
        self.set_plan(plan)
        self.tokens = list(req.prompt_ids)
        self.n_prompt = len(req.prompt_ids)
        self.generator = req.params.generator()
        self.stream = TextStream(comp.tokenizer, req.params.stop)
        self.tally = RoutingTally(req.trace_tokens)
        self.t_first: float | None = None
        self.max_batch_seen = 0
        self.finish: str | None = None
        self.top_n = req.logprobs                        # None: no logprobs for generated tokens
        self.prompt_top_n = req.prompt_logprobs          # None: the prompt is not scored
        self.logprobs: list[TokenLogprob] = []           # generated tokens' entries, in order
        self.pending: list[TokenLogprob] = []            # entries of tokens whose text is not out yet

    def set_plan(self, plan: RowPlan) -> None:
        self.allowed, self.fixed, self.candidates = plan.allowed, plan.fixed, plan.candidates
        self.notes.extend(n for n in plan.notes if n not in self.notes)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt


class Engine:
    def __init__(self, composition: ServedComposition, settings: ServeSettings | None = None, *,
                 builder: Callable[[], ServedComposition] | None = None,
                 on_step: Callable[[dict], None] | None = None):
        """``builder`` rebuilds the current composition if a swap fails; ``on_step`` observes each forward."""
        self.settings = settings or ServeSettings()
        self.comp = composition
        self._builder = builder
        self.on_step = on_step
        self._cv = threading.Condition()
        self._pending: collections.deque[RequestHandle] = collections.deque()
        self._control: list[tuple] = []
        self._rows: list[_Row] = []
        self._batch: KVBatch | None = None
        self._withdrawn: frozenset[str] = frozenset()
        self._published_withdrawn: frozenset[str] = frozenset()
        self._fail_closed = False
        self.epoch = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = False
        self.counters = collections.Counter()
        self.withdrawal_log: list[dict] = []
        self._install(composition)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="expertmesh-engine", daemon=True)
            self._thread.start()
            self._ready = True
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._ready = False
        err = NotReadyError("the server is shutting down")
        for h in list(self._pending) + [r.handle for r in self._rows]:
            h.emit(Event("error", error=err))
        self._pending.clear()
        self._rows, self._batch = [], None

    @property
    def ready(self) -> bool:
        return self._ready and self._thread is not None and self._thread.is_alive()

    @property
    def withdrawn(self) -> frozenset[str]:
        """The withdrawn set once fully applied (rows re-planned, KV recomputed, weights evicted)."""
        return self._published_withdrawn

    # -- requests ---------------------------------------------------------------------------------------------
    def check(self, request: GenerationRequest) -> None:
        """Cheap checks at submit (so the HTTP layer can answer 4xx before streaming anything)."""
        check_context(request, self.settings.max_context)
        self.comp.check_names(request.selection)
        for field, n in (("logprobs", request.logprobs), ("prompt_logprobs", request.prompt_logprobs)):
            if n is not None and not 0 <= n <= MAX_TOP_LOGPROBS:
                raise InvalidInputError(f"{field}={n} must be in [0, {MAX_TOP_LOGPROBS}]", detail={"field": field})
        if request.prompt_logprobs is not None and not getattr(self.comp.batch_class, "scores_prompts", False):
            raise UnsupportedParameterError(
                f"prompt logprobs (echo) are not available for a {self.comp.info.get('router_type')!r} "
                "composition; ask for generated-token logprobs only", detail={"field": "echo"})

    def submit(self, request: GenerationRequest, sink: Callable[[Event], None]) -> RequestHandle:
        if not self.ready:
            raise NotReadyError("the inference engine is not running")
        self.check(request)
        handle = RequestHandle(request, sink)
        with self._cv:
            if len(self._pending) >= self.settings.max_queue:
                raise OverloadedError(f"{len(self._pending)} requests are waiting; retry shortly",
                                      detail={"retry_after_s": 1})
            self._pending.append(handle)
            self._cv.notify_all()
        return handle

    # -- control (any thread) -------------------------------------------------------------------------------
    def apply_withdrawn(self, names: set[str], *, revision: object = None, seen_at: float | None = None) -> None:
        """Owner withdrawals (member names). ``seen_at`` is when the watcher saw the change (monotonic)."""
        self._send(("withdrawn", frozenset(names), revision, seen_at or time.monotonic()))

    def set_fail_closed(self, on: bool, reason: str = "") -> None:
        """Registry unreachable for too long: serve the public base only until it answers again."""
        self._send(("fail_closed", bool(on), reason))

    def swap(self, builder: Callable[[], ServedComposition], *, revision: object = None) -> None:
        """Load a new composition version (new members) between two steps; rows in flight are recomputed."""
        self._send(("swap", builder, revision))

    def _send(self, msg: tuple) -> None:
        with self._cv:
            self._control.append(msg)
            self._cv.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once no request is waiting or running and every control message was applied (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cv:
                if not self._pending and not self._rows and not self._control:
                    return True
            time.sleep(0.005)
        return False

    def stats(self) -> dict:
        return {"ready": self.ready, "running": len(self._rows), "waiting": len(self._pending),
                "epoch": self.epoch, "withdrawn": sorted(self._withdrawn), "fail_closed": self._fail_closed,
                "composition": self.comp.describe(), "resident": self.resident.stats(),
                "counters": dict(self.counters), "withdrawals": list(self.withdrawal_log[-20:])}

    # -- worker -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)   # OpenMP's thread count is per calling thread
        while not self._stop.is_set():
            try:
                self._apply_control()
                self._admit()
                if self._rows:
                    self._step()
                else:
                    with self._cv:
                        if not self._pending and not self._control and not self._stop.is_set():
                            self._cv.wait(0.25)
            except Exception as exc:    # never let one bad batch kill the server: fail its rows, go on
                log.exception("engine step failed; failing %d running request(s)", len(self._rows))
                err = exc if isinstance(exc, ExpertMeshError) else InternalError(
                    f"internal error while generating ({type(exc).__name__}); see the server log")
                for r in self._rows:
                    r.handle.emit(Event("error", error=err))
                self._rows, self._batch = [], None
                self.counters["engine_errors"] += 1

    def _install(self, comp: ServedComposition) -> None:
        if self.settings.top_k is not None:
            comp.set_top_k(self.settings.top_k)
        loader = package_loader(comp.expert_dirs, comp.fingerprint) if set(comp.members) <= set(comp.expert_dirs) \
            else None
        self.resident = ResidentSet(comp.model, self.settings.max_resident_experts, loader,
                                    budget_mb=self.settings.resident_budget_mb, max_needed=comp.max_experts_per_request)
        self.comp = comp
        self._pad_id = comp.tokenizer.pad_token_id if comp.tokenizer.pad_token_id is not None else 0
        self._eos = comp.eos_ids()

    def _names(self, mask: torch.Tensor) -> set[str]:
        return {self.comp.members[j] for j in mask.nonzero().flatten().tolist()}

    def _admit(self) -> None:
        free = self.settings.max_batch - len(self._rows)
        if free <= 0 or not self._pending:
            return
        if not self._rows and self.settings.batch_wait_ms > 0:
            time.sleep(self.settings.batch_wait_ms / 1000.0)   # let a burst arrive: one prefill for all of it
        joined: list[_Row] = []
        needed = self._union(self._rows)
        while len(joined) < free:
            with self._cv:
                if not self._pending:
                    break
                handle = self._pending.popleft()
            if handle.cancelled:
                continue
            try:
                plan = self._plan(handle)          # outside the lock: a router may embed the prompt
            except ExpertMeshError as e:
                handle.emit(Event("error", error=e))
                continue
            # bounded resident set: wait (head of line) rather than exceed it, unless nothing else runs
            if int((needed | plan.allowed).sum()) > self.resident.capacity and (self._rows or joined):
                with self._cv:
                    self._pending.appendleft(handle)
                break
            try:                               # load its experts now: a bad package fails this request only
                self.resident.ensure(self._names(needed | plan.allowed))
            except ExpertMeshError as e:
                self.counters["expert_load_errors"] += 1
                handle.emit(Event("error", error=e))
                continue
            needed |= plan.allowed
            joined.append(_Row(handle, plan, self.comp))
        if joined:
            for r in joined:
                r.handle.emit(Event("start", {"candidates": r.candidates, "notes": list(r.notes),
                                              "prompt_tokens": r.n_prompt}))
            self._join(joined)

    def _plan(self, handle: RequestHandle) -> RowPlan:
        cached = getattr(handle, "plan_cache", None)     # a request waiting at the head of the line
        if cached is not None and cached[0] == self.epoch:
            return cached[1]
        req = handle.request
        if self._fail_closed:
            plan = RowPlan.public_only(len(self.comp.members), "registry unreachable: experts disabled until it "
                                       "answers; answered by the public base")
        else:
            plan = self.comp.plan_row(req.prompt, req.selection, set(self._withdrawn))
        handle.plan_cache = (self.epoch, plan)
        return plan

    # The rows' plans are the one place withdrawal applies (a withdrawal re-plans the rows it touches, see
    # _recompute), so the masks below are stacked as they are, never filtered again.
    def _mask(self, rows: list[_Row]) -> torch.Tensor | None:
        """[B, N] bool: the rows' plan masks, stacked."""
        if not self.comp.members:
            return None
        return torch.stack([r.allowed for r in rows])

    def _fixed(self, rows: list[_Row]) -> torch.Tensor | None:
        """Sequence-level weights [B, N+1] when the composition selects per sequence (then every row has them)."""
        if not self.comp.members or all(r.fixed is None for r in rows):
            return None
        public = torch.zeros(len(self.comp.members) + 1)
        public[0] = 1.0
        return torch.stack([r.fixed if r.fixed is not None else public for r in rows])

    def _union(self, rows: list[_Row]) -> torch.Tensor:
        out = torch.zeros(len(self.comp.members), dtype=torch.bool)
        for r in rows:
            out |= r.allowed
        return out

    def _ensure_resident(self, rows: list[_Row]) -> None:
        self.resident.ensure(self._names(self._union(rows)))

    def _join(self, rows: list[_Row]) -> None:
        """Prefill rows (new, or recomputed after a withdrawal/swap) and merge them into the batch. A row whose
        prompt is scored (echo) is prefilled alone: its forward keeps every position's logits [1, T, V]."""
        scored = [r for r in rows if r.prompt_top_n is not None and r.n_generated == 0]
        plain = [r for r in rows if r not in scored]
        if plain:
            self._prefill(plain)
        for r in scored:
            self._prefill([r], score_prompt=True)

    def _prefill(self, rows: list[_Row], score_prompt: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            self._ensure_resident(self._rows + rows)
            kw = {"all_logits": True} if score_prompt else {}
            batch, logits, trace = self.comp.batch_class.prefill(
                self.comp.model, [r.tokens for r in rows], self._mask(rows), self._pad_id, self._fixed(rows), **kw)
            if score_prompt:             # one row, no padding: position t predicts token t+1
                r = rows[0]
                with self.comp.tokenizer_lock:
                    entries = prompt_entries(self.comp.tokenizer, logits[0], r.tokens, r.prompt_top_n)
                r.handle.emit(Event("prompt", {"logprobs": entries}))
                logits = logits[:, -1]
        except Exception:                      # these rows are in no batch yet: tell them here
            err = InternalError("internal error while reading the prompt; see the server log")
            for r in rows:
                r.handle.emit(Event("error", error=err))
            raise
        n_tok = sum(len(r.tokens) for r in rows)
        self.counters["prefill_tokens"] += n_tok
        self.counters["prefills"] += 1
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.merge(batch)
        self._rows.extend(rows)
        self._after_forward(rows, logits, trace, "prefill", t0, n_tok)

    def _step(self) -> None:
        rows = self._rows
        self._ensure_resident(rows)
        t0 = time.perf_counter()
        logits, trace = self._batch.decode(self.comp.model, [r.tokens[-1] for r in rows], self._mask(rows),
                                           self._fixed(rows))
        self.counters["decode_steps"] += 1
        self._after_forward(rows, logits, trace, "decode", t0, len(rows))

    def _after_forward(self, rows: list[_Row], logits, trace, kind: str, t0: float, n_tok: int) -> None:
        """Record routing, sample, stream, and drop rows that finished (``rows`` are the forward's rows)."""
        entries = trace.entries if trace is not None else ["public"]
        tokens = sample_rows(logits, [r.params for r in rows], [r.generator for r in rows])
        batch_size = len(self._rows)
        for b, (r, tok) in enumerate(zip(rows, tokens)):
            mass = trace.row(b) if trace is not None else {"public": 1.0}
            r.tally.add(mass, float(trace.tokens[b]) if trace is not None else 1.0)
            r.max_batch_seen = max(r.max_batch_seen, batch_size)
            if r.params.max_tokens == 0:          # prompt scoring only: nothing is generated
                self._finish(r, "length", time.monotonic())
                continue
            r.tally.add_token(r.n_generated, mass, self.epoch)
            if r.top_n is not None:               # the same logits the token was sampled from
                with self.comp.tokenizer_lock:
                    r.pending += score(self.comp.tokenizer, logits[b:b + 1], [tok], r.top_n, [len(r.stream.text)])
            self._emit_token(r, tok)
        self.counters["generated_tokens"] += len(rows)
        if self.on_step is not None:
            self.on_step({"kind": kind, "rows": len(rows), "batch": batch_size, "tokens": n_tok,
                          "seconds": time.perf_counter() - t0, "entries": entries})
        self._drop_finished()

    def _emit_token(self, r: _Row, tok: int) -> None:
        now = time.monotonic()
        if r.t_first is None:
            r.t_first = now
        r.tokens.append(tok)
        finish = None
        if tok in self._eos and not r.params.ignore_eos:
            finish = "stop"
            delta = r.stream.finish()           # flush text held back for a possible stop string
        else:
            with self.comp.tokenizer_lock:
                delta, stopped = r.stream.push(tok)
            if stopped:
                finish = "stop"                 # text already cut before the stop string
        if finish is None and (r.n_generated >= r.params.max_tokens or len(r.tokens) >= self.settings.max_context):
            finish = "length"
            delta += r.stream.finish()
        # An end-of-sequence token keeps its logprob entry (as vLLM does): one entry per completion token, so
        # lm-eval's echo + max_tokens=1 requests always get prompt + 1 entries.
        if delta or (finish is not None and r.pending):
            data = {"text": delta, "token": tok}
            if r.top_n is not None:             # the tokens whose text this delta carries (at the end, also
                data["logprobs"], r.pending = r.pending, []     # those of a cut multi-byte character)
                r.logprobs += data["logprobs"]
            r.handle.emit(Event("delta", data))
        if finish is not None:
            self._finish(r, finish, now)

    def _finish(self, r: _Row, finish: str, now: float) -> None:
        r.finish = finish
        r.logprobs += r.pending                 # tokens whose text never completed (a cut multi-byte character)
        r.pending = []
        t_first = r.t_first if r.t_first is not None else now
        usage = {"prompt_tokens": r.n_prompt, "completion_tokens": r.n_generated, "total_tokens": len(r.tokens)}
        r.handle.emit(Event("done", {
            "finish_reason": finish, "usage": usage, "routing": r.tally.summary(r.notes, r.candidates),
            "latency_s": now - r.handle.submitted, "ttft_s": t_first - r.handle.submitted,
            "max_batch": r.max_batch_seen, "routed_tokens": r.tally.tokens,
            "logprobs": r.logprobs if r.top_n is not None else None}))

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if r.finish is None and not r.handle.cancelled]
        if len(keep) == len(self._rows):
            return
        self.counters["cancelled"] += sum(1 for r in self._rows if r.handle.cancelled and r.finish is None)
        self._rows = [self._rows[i] for i in keep]
        if keep:
            self._batch.select(keep)
        else:
            self._batch = None

    # -- control (worker thread) ------------------------------------------------------------------------------
    def _apply_control(self) -> None:
        with self._cv:
            msgs, self._control = self._control, []
        for msg in msgs:
            if msg[0] == "withdrawn":
                self._set_withdrawn(*msg[1:])
            elif msg[0] == "fail_closed":
                self._set_fail_closed(*msg[1:])
            elif msg[0] == "swap":
                self._swap(*msg[1:])

    def _set_withdrawn(self, names: frozenset[str], revision: object, seen_at: float) -> None:
        if names == self._withdrawn:
            return
        new = set(names) - set(self._withdrawn)
        self._withdrawn = names
        self.comp.set_withdrawn(set(names))
        self.epoch += 1
        if new:
            self.resident.evict(new)
            self._recompute(new, f"withdrawn by its owner during this request: {sorted(new)}; "
                                 f"tokens from epoch {self.epoch} on were computed without it")
        applied = time.monotonic()
        self.withdrawal_log.append({"epoch": self.epoch, "withdrawn": sorted(names), "new": sorted(new),
                                    "revision": revision, "seen_to_applied_s": round(applied - seen_at, 4),
                                    "applied_at": applied})
        self._published_withdrawn = names       # last: readers of ``withdrawn`` see a complete switch
        log.info("withdrawn set now %s (epoch %d, revision %s)", sorted(names), self.epoch, revision)

    def _set_fail_closed(self, on: bool, reason: str) -> None:
        if on == self._fail_closed:
            return
        self._fail_closed = on
        self.epoch += 1
        if on:
            log.warning("registry unreachable (%s): serving the public base only", reason)
            self._recompute(set(self.comp.members), "registry unreachable: experts disabled (fail closed)")

    def _recompute(self, lost: set[str], note: str) -> None:
        """Rows whose mask held any of ``lost`` are re-planned (as if ``lost`` had never been members) and
        their KV cache is recomputed by one prefill; the other rows keep their cache."""
        lost_mask = self.comp.mask_of(lost)
        hit = [i for i, r in enumerate(self._rows) if bool((r.allowed & lost_mask).any())]
        if not hit:
            return
        rows = self._detach(hit)
        for r in rows:
            r.notes.append(note)
            self._replan(r)
        self.counters["recomputed_rows"] += len(rows)
        self._join(rows)

    def _detach(self, idx: list[int]) -> list[_Row]:
        rows = [self._rows[i] for i in idx]
        keep = [i for i in range(len(self._rows)) if i not in set(idx)]
        self._rows = [self._rows[i] for i in keep]
        if keep:
            self._batch.select(keep)
        else:
            self._batch = None
        return rows

    def _replan(self, r: _Row) -> None:
        try:
            r.set_plan(self._plan(r.handle))
        except ExpertMeshError as e:          # e.g. an included expert is no longer a member after a swap
            gone = set(self.comp.members) if self._fail_closed else set(self._withdrawn)
            kept = self.comp.mask_of(set(self.comp.members) - gone)
            allowed = r.allowed & kept if r.allowed.shape == kept.shape else torch.zeros_like(kept)
            r.set_plan(RowPlan(allowed=allowed, candidates=[], notes=[
                f"re-planning failed ({e.message}); kept the remaining experts of the original plan"]))

    def _swap(self, builder: Callable[[], ServedComposition], revision: object) -> None:
        rows, self._rows, self._batch = self._rows, [], None
        old_members = set(self.comp.members)
        self.comp.close()
        try:
            comp = builder()
        except Exception:
            log.exception("loading the new composition version failed; restoring the previous one")
            if self._builder is None:
                self._ready = False
                for r in rows:
                    r.handle.emit(Event("error", error=NotReadyError("composition reload failed")))
                raise
            comp = self._builder()
        else:
            self._builder = builder
        self._install(comp)
        self.comp.set_withdrawn(set(self._withdrawn))
        self.epoch += 1
        self.counters["swaps"] += 1
        for r in rows:
            r.stream.tokenizer = comp.tokenizer
            r.notes.append(f"composition changed to version {comp.version} during this request; re-planned")
            self._replan(r)
        log.info("composition now %s version %s (was %s members, now %s)", comp.name, comp.version,
                 len(old_members), len(comp.members))
        if rows:
            self._join(rows)
