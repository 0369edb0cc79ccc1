"""What goes into the engine (GenerationRequest) and what comes out (a stream of Events on a RequestHandle).

Events, in order: ``start`` (routing plan) once, ``prompt`` (the prompt's TokenLogprobs, only when
``prompt_logprobs`` is asked for), ``delta`` (text, token, and with ``logprobs`` the TokenLogprobs of the tokens
in that text) per token or group of tokens, then ``done`` (finish reason, usage, routing, logprobs) or
``error`` (an ExpertMeshError; before ``start`` it means the request was refused).
The engine calls ``sink(event)`` from its worker thread; the HTTP layer bridges that into asyncio.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from expertmesh.serving.composition import Selection
from expertmesh.serving.errors import ContextLengthError
from expertmesh.serving.sampling import SamplingParams

_ids = itertools.count(1)


@dataclass
class GenerationRequest:
    prompt: str                                  # text, for routers that embed the prompt
    prompt_ids: list[int]
    params: SamplingParams
    selection: Selection = field(default_factory=Selection)
    trace_tokens: bool = False                   # keep per-token gate mass (return_routing: "tokens")
    logprobs: int | None = None                  # top-N logprobs of each generated token (None: none)
    prompt_logprobs: int | None = None           # top-N logprobs of each prompt token (echo; None: none)


@dataclass
class Event:
    kind: str                                    # start | delta | done | error
    data: dict[str, Any] = field(default_factory=dict)
    error: Exception | None = None


class RequestHandle:
    def __init__(self, request: GenerationRequest, sink: Callable[[Event], None]):
        self.id = next(_ids)
        self.request = request
        self.sink = sink
        self.submitted = time.monotonic()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """The client went away: the engine drops the row at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:   # a sink whose loop is closed must not take the engine down
            self.cancel()


class RoutingTally:
    """One request's gate mass over all its routed tokens (prompt + generated), by entry name."""

    def __init__(self, keep_tokens: bool):
        self.mass: dict[str, float] = {}
        self.tokens = 0.0
        self.per_token: list[dict[str, Any]] | None = [] if keep_tokens else None

    def add(self, row_mass: dict[str, float], n_tokens: float) -> None:
        for name, m in row_mass.items():
            self.mass[name] = self.mass.get(name, 0.0) + m * n_tokens
        self.tokens += n_tokens

    def add_token(self, index: int, row_mass: dict[str, float], epoch: int) -> None:
        if self.per_token is not None:
            self.per_token.append({"index": index, "epoch": epoch,
                                   "weights": {k: round(v, 6) for k, v in row_mass.items() if v > 0}})

    def summary(self, notes: list[str], candidates: list[str]) -> dict[str, Any]:
        weights = {k: round(v / self.tokens, 6) for k, v in self.mass.items()} if self.tokens else {}
        experts = sorted((k for k, v in weights.items() if k != "public" and v > 0), key=lambda k: -weights[k])
        out: dict[str, Any] = {"experts": experts, "weights": weights, "candidates": candidates, "notes": notes}
        if self.per_token is not None:
            out["tokens"] = self.per_token
        return out


class SyncSink:
    """A sink that collects events for a blocking caller (benchmarks, tests, library use)."""

    def __init__(self):
        self.q: queue.Queue[Event] = queue.Queue()

    def __call__(self, event: Event) -> None:
        self.q.put(event)

    def events(self, timeout: float = 600.0):
        deadline = time.monotonic() + timeout
        while True:
            ev = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            yield ev
            if ev.kind in ("done", "error"):
                return


def check_context(request: GenerationRequest, max_context: int) -> None:
    """The prompt is not empty and prompt + max_tokens fits the server's context (both engines, at submit)."""
    n, limit = len(request.prompt_ids), max_context
    if n == 0:
        raise ContextLengthError("the prompt is empty after tokenisation", detail={"field": "prompt"})
    if n + request.params.max_tokens > limit:
        raise ContextLengthError(
            f"prompt ({n} tokens) + max_tokens ({request.params.max_tokens}) exceeds this server's context "
            f"of {limit} tokens; shorten the prompt or lower max_tokens",
            detail={"prompt_tokens": n, "max_tokens": request.params.max_tokens, "max_context": limit})
