"""The OpenAI wire format of a request's events: one JSON response, or server-sent-event chunks.

``serve_requests`` submits one engine request per choice, waits until every one was admitted (so refusals
become 4xx answers, not broken streams), then returns a JSONResponse or a StreamingResponse whose chunks are
exactly what the openai client parses: ``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``; an error after the
stream started is one ``data: {"error": {...}}`` event. The handles are cancelled when the client goes away.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from expertmesh.errors import ExpertMeshError
from expertmesh.serving.errors import RequestTimeoutError
from expertmesh.serving.logprobs import TokenLogprob, chat_logprobs, completion_logprobs
from expertmesh.serving.requests import Event, GenerationRequest
from serving.schemas import _Common


class State:
    """What came back for each request (choice) so far."""

    def __init__(self, n: int):
        self.started = [False] * n
        self.text = [""] * n
        self.prompt_logprobs: list[list | None] = [None] * n
        self.done: list[dict | None] = [None] * n

    def add(self, i: int, ev: Event) -> None:
        if ev.kind == "error":
            raise ev.error
        if ev.kind == "start":
            self.started[i] = True
        elif ev.kind == "prompt":
            self.prompt_logprobs[i] = ev.data["logprobs"]
        elif ev.kind == "delta":
            self.text[i] += ev.data["text"]
        elif ev.kind == "done":
            self.done[i] = ev.data

    @property
    def all_started(self) -> bool:
        return all(self.started)

    @property
    def all_done(self) -> bool:
        return all(d is not None for d in self.done)

    def usage(self) -> dict:
        p = sum(d["usage"]["prompt_tokens"] for d in self.done if d)
        c = sum(d["usage"]["completion_tokens"] for d in self.done if d)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def serve_requests(engine, settings, metrics, reqs: list[GenerationRequest], body: _Common, fmt: "Format"):
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    handles = []

    def sink_for(i: int):
        return lambda ev: loop.call_soon_threadsafe(q.put_nowait, (i, ev))

    async def next_event() -> tuple[int, Event]:
        try:
            return await asyncio.wait_for(q.get(), settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"no token within {settings.request_timeout_s} s") from None

    state = State(len(reqs))
    early: list[tuple[int, Event]] = []
    try:
        for i, r in enumerate(reqs):
            handles.append(engine.submit(r, sink_for(i)))
        while not state.all_started:          # refusals (e.g. a withdrawn include) become 4xx, not a stream
            i, ev = await next_event()
            state.add(i, ev)
            early.append((i, ev))
        if not body.stream:
            while not state.all_done:
                i, ev = await next_event()
                state.add(i, ev)
    except BaseException:
        for h in handles:
            h.cancel()
        raise
    if not body.stream:
        for d in state.done:
            metrics.observe_done(fmt.endpoint, d)
        return JSONResponse(fmt.full(state, body.return_routing))
    return StreamingResponse(_stream(q, early, state, handles, body, fmt, metrics, next_event),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(q, early, state: State, handles, body: _Common, fmt: "Format", metrics, next_event):
    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        for i in range(len(handles)):
            first = fmt.first_chunk(i)
            if first is not None:
                yield sse(first)
        pending = list(early)
        while True:
            if pending:
                i, ev = pending.pop(0)
            elif state.all_done:
                break
            else:
                i, ev = await next_event()
                state.add(i, ev)
            if ev.kind == "delta":
                yield sse(fmt.delta_chunk(i, ev.data["text"], ev.data.get("logprobs")))
            elif ev.kind == "prompt":
                yield sse(fmt.prompt_chunk(i, ev.data["logprobs"]))
            elif ev.kind == "done":
                metrics.observe_done(fmt.endpoint, ev.data)
                yield sse(fmt.final_chunk(i, ev.data, body.return_routing))
        if body.include_usage:
            yield sse({**fmt.header("chunk"), "choices": [], "usage": state.usage()})
        yield "data: [DONE]\n\n"
    except ExpertMeshError as e:
        yield sse(e.to_body())
    finally:
        for h in handles:
            h.cancel()


class Format:
    endpoint = ""

    def __init__(self, model: str, *, logprobs: bool = False):
        self.model = model
        self.logprobs = logprobs               # the request asked for logprobs
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def header(self, kind: str) -> dict:
        return {"id": self.id, "object": self.objects[kind], "created": self.created, "model": self.model}

    def full(self, state: State, return_routing) -> dict:
        choices = [self.choice(i, state.text[i], d, state.prompt_logprobs[i]) for i, d in enumerate(state.done)]
        out = {**self.header("full"), "choices": choices, "usage": state.usage()}
        if return_routing:
            for c, d in zip(choices, state.done):
                c["routing"] = d["routing"]
            out["routing"] = choices[0]["routing"] if len(choices) == 1 else [c["routing"] for c in choices]
        return out

    def final_chunk(self, i: int, done: dict, return_routing) -> dict:
        out = {**self.header("chunk"), "choices": [self.chunk_choice(i, None, done["finish_reason"])]}
        if return_routing:
            out["routing"] = done["routing"]
        return out

    def delta_chunk(self, i: int, text: str, entries: list[TokenLogprob] | None = None) -> dict:
        return {**self.header("chunk"), "choices": [self.chunk_choice(i, text, None, entries)]}

    def first_chunk(self, i: int) -> dict | None:
        return None

    def prompt_chunk(self, i: int, entries: list[TokenLogprob]) -> dict | None:
        return None


class CompletionFormat(Format):
    """``echo`` holds each choice's prompt text when the request echoes it (None otherwise)."""

    prefix, endpoint = "cmpl", "/v1/completions"
    objects = {"full": "text_completion", "chunk": "text_completion"}

    def __init__(self, model: str, *, echo: list[str] | None = None, logprobs: bool = False):
        super().__init__(model, logprobs=logprobs)
        self.echo = echo
        self._shift = [0] * len(echo or [])   # streaming: where generated text starts in the choice's text

    def choice(self, i: int, text: str, done: dict, prompt_lp: list[TokenLogprob] | None = None) -> dict:
        lp = None
        prompt = self.echo[i] if self.echo is not None else ""
        if self.logprobs:
            lp = _join_lp([completion_logprobs(prompt_lp or []),
                           completion_logprobs(done.get("logprobs") or [], shift=len(prompt))])
        return {"index": i, "text": prompt + text, "logprobs": lp, "finish_reason": done["finish_reason"]}

    def chunk_choice(self, i: int, text: str | None, finish: str | None,
                     entries: list[TokenLogprob] | None = None, shift: int = 0) -> dict:
        lp = completion_logprobs(entries, shift=shift) if self.logprobs and entries is not None else None
        return {"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}

    def delta_chunk(self, i: int, text: str, entries: list[TokenLogprob] | None = None) -> dict:
        shift = self._shift[i] if self.echo else 0
        return {**self.header("chunk"), "choices": [self.chunk_choice(i, text, None, entries, shift)]}

    def first_chunk(self, i: int) -> dict | None:
        if self.echo is None or self.logprobs:     # with logprobs, the prompt comes once it is scored
            return None
        self._shift[i] = len(self.echo[i])
        return {**self.header("chunk"), "choices": [self.chunk_choice(i, self.echo[i], None)]}

    def prompt_chunk(self, i: int, entries: list[TokenLogprob]) -> dict | None:
        if self.echo is None:
            return None
        self._shift[i] = len(self.echo[i])
        return {**self.header("chunk"), "choices": [self.chunk_choice(i, self.echo[i], None, entries)]}


def _join_lp(parts: list[dict]) -> dict:
    return {k: [x for p in parts for x in p[k]] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


class ChatFormat(Format):
    prefix, endpoint = "chatcmpl", "/v1/chat/completions"
    objects = {"full": "chat.completion", "chunk": "chat.completion.chunk"}

    def choice(self, i: int, text: str, done: dict, prompt_lp=None) -> dict:
        lp = chat_logprobs(done.get("logprobs") or []) if self.logprobs else None
        return {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                "finish_reason": done["finish_reason"]}

    def chunk_choice(self, i: int, text: str | None, finish: str | None,
                     entries: list[TokenLogprob] | None = None) -> dict:
        lp = chat_logprobs(entries) if self.logprobs and entries is not None else None
        return {"index": i, "delta": {} if text is None else {"content": text}, "logprobs": lp,
                "finish_reason": finish}

    def first_chunk(self, i: int) -> dict:
        return {**self.header("chunk"), "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]}
