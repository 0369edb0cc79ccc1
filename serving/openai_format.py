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
from expertmesh.serving.requests import Event, GenerationRequest
from serving.schemas import _Common


class State:
    """What came back for each request (choice) so far."""

    def __init__(self, n: int):
        self.started = [False] * n
        self.text = [""] * n
        self.done: list[dict | None] = [None] * n

    def add(self, i: int, ev: Event) -> None:
        if ev.kind == "error":
            raise ev.error
        if ev.kind == "start":
            self.started[i] = True
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
                yield sse(fmt.delta_chunk(i, ev.data["text"]))
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

    def __init__(self, model: str):
        self.model = model
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def header(self, kind: str) -> dict:
        return {"id": self.id, "object": self.objects[kind], "created": self.created, "model": self.model}

    def full(self, state: State, return_routing) -> dict:
        choices = [self.choice(i, state.text[i], d) for i, d in enumerate(state.done)]
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

    def delta_chunk(self, i: int, text: str) -> dict:
        return {**self.header("chunk"), "choices": [self.chunk_choice(i, text, None)]}

    def first_chunk(self, i: int) -> dict | None:
        return None


class CompletionFormat(Format):
    prefix, endpoint = "cmpl", "/v1/completions"
    objects = {"full": "text_completion", "chunk": "text_completion"}

    def choice(self, i: int, text: str, done: dict) -> dict:
        return {"index": i, "text": text, "logprobs": None, "finish_reason": done["finish_reason"]}

    def chunk_choice(self, i: int, text: str | None, finish: str | None) -> dict:
        return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}


class ChatFormat(Format):
    prefix, endpoint = "chatcmpl", "/v1/chat/completions"
    objects = {"full": "chat.completion", "chunk": "chat.completion.chunk"}

    def choice(self, i: int, text: str, done: dict) -> dict:
        return {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": done["finish_reason"]}

    def chunk_choice(self, i: int, text: str | None, finish: str | None) -> dict:
        return {"index": i, "delta": {} if text is None else {"content": text}, "logprobs": None,
                "finish_reason": finish}

    def first_chunk(self, i: int) -> dict:
        return {**self.header("chunk"), "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]}
