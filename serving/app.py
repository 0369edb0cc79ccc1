"""The OpenAI-compatible HTTP API: ``create_app(settings, engine)``; no module-level engine.

    GET  /v1/models, /v1/models/{id}      the composition as one model (+ its members, tags, withdrawn)
    POST /v1/completions                  OpenAI completions (prompt: str | [str] | [int] | [[int]])
    POST /v1/chat/completions             OpenAI chat (the tokenizer's chat template)
    GET  /healthz  (alive)   /readyz  (engine running; registry fresh)   /metrics  (Prometheus)

Streaming is server-sent events exactly as the openai client reads them (openai_format.py).
Every error leaves through ``error_response``: one mapping from the error tree to a status and the body
``{"error": {"code", "message", "detail"}}`` (request-validation and routing errors included).

Run it: ``expertmesh serve --composition NAME|DIR`` (see cli/serve.py).
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import weakref
from typing import Annotated, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from expertmesh.errors import (
    AuthenticationError, ExpertMeshError, InternalError, InvalidInputError, MethodNotAllowedError, NotFoundError,
    PayloadTooLargeError, status_for,
)
from expertmesh.serving.engine import Engine
from expertmesh.serving.errors import ModelNotFoundError
from expertmesh.serving.requests import GenerationRequest
from expertmesh.serving.sampling import SamplingParams
from expertmesh.serving.settings import ServeSettings
from serving.metrics import ServingMetrics
from serving.openai_format import ChatFormat, CompletionFormat, serve_requests
from serving.schemas import ChatCompletionRequest, CompletionRequest, _Common

log = logging.getLogger("expertmesh.serving")

def as_library_error(exc: Exception) -> ExpertMeshError:
    """Anything raised while serving, as an error of the one tree."""
    if isinstance(exc, ExpertMeshError):
        return exc
    if isinstance(exc, RequestValidationError):
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request", "type": ""}
        if first["type"] == "json_invalid":
            return InvalidInputError(f"the request body is not valid JSON ({first['msg']}); send a JSON object",
                                     detail={"field": "body", "errors": errors})
        same = [e for e in errors if e["loc"][:2] == first["loc"][:2]]
        if len(same) > 1:       # a union field (prompt: str | [str] | [int] | ...): one error per branch
            where = ".".join(first["loc"][1:2]) or "body"
            msg = "; or ".join(dict.fromkeys(e["msg"] for e in same))
        else:
            where, msg = ".".join(first["loc"][1:]) or "body", first["msg"]
        return InvalidInputError(f"{where}: {msg}", detail={"field": where, "errors": errors})
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return NotFoundError("no such endpoint; see /docs")
        if exc.status_code == 405:
            return MethodNotAllowedError(str(exc.detail))
        err = InvalidInputError(str(exc.detail)) if exc.status_code < 500 else ExpertMeshError(str(exc.detail))
        err.code, err.http_status = f"http_{exc.status_code}", exc.status_code    # the framework's own status
        return err
    return InternalError(f"internal error ({type(exc).__name__}); see the server log")


def error_response(exc: Exception) -> JSONResponse:
    err = as_library_error(exc)
    status = status_for(err)
    if status >= 500:
        log.error("serving error %s: %s", err.code, err.message, exc_info=not isinstance(exc, ExpertMeshError))
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(err.to_body(), status_code=status, headers=headers)


def _install_error_handler(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for cls in (ExpertMeshError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handle)


# -- dependencies ---------------------------------------------------------------------------------------------
def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]


def create_app(settings: ServeSettings, engine: Engine, *, watcher=None) -> FastAPI:
    """The app owns the lifecycle of what it is given: it starts ``engine`` (and ``watcher``) and stops them."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if watcher is not None:
            watcher.start()
        log.info("serving %s on %s:%s", model_id(settings, engine), settings.host, settings.port)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            engine.stop()

    app = FastAPI(title="expertmesh inference", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API over a composition of LoRA experts, with per-request "
                              "opt-in/opt-out, routing traces and live owner withdrawal.")
    app.state.settings, app.state.engine, app.state.watcher = settings, engine, watcher
    app.state.metrics = ServingMetrics(weakref.ref(engine))
    _install_error_handler(app)

    @app.middleware("http")
    async def count_and_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if settings.api_key and request.url.path.startswith("/v1/") and not _key_ok(request, settings.api_key):
            response = error_response(AuthenticationError(
                "missing or wrong API key: send 'Authorization: Bearer <key>' (the openai client's api_key)"))
            response.headers["WWW-Authenticate"] = "Bearer"
        elif size is not None and size.isdigit() and int(size) > settings.max_body_bytes:
            response = error_response(PayloadTooLargeError(
                f"request body of {size} bytes exceeds the limit of {settings.max_body_bytes}"))
        else:
            response = await call_next(request)
        route = request.scope.get("route")      # the route template, so label values stay few
        app.state.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    _add_routes(app)
    return app


def _key_ok(request: Request, key: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def model_id(settings: ServeSettings, engine: Engine) -> str:
    return settings.model_name or engine.comp.name


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request, engine: EngineDep) -> JSONResponse:
        watcher = request.app.state.watcher
        reg = watcher.status() if watcher is not None else {"configured": False}
        ok = engine.ready and not reg.get("stale", False)
        body = {"status": "ready" if ok else "not_ready", "engine": {k: engine.stats()[k] for k in
                ("ready", "running", "waiting", "epoch", "withdrawn", "fail_closed")}, "registry": reg}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics(m: MetricsDep) -> Response:
        return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def list_models(engine: EngineDep, settings: SettingsDep) -> dict:
        return {"object": "list", "data": [_model_card(settings, engine)]}

    @app.get("/v1/models/{mid:path}")
    def get_model(mid: str, engine: EngineDep, settings: SettingsDep) -> dict:
        _check_model(settings, engine, mid)
        return _model_card(settings, engine)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, engine: EngineDep, settings: SettingsDep, m: MetricsDep):
        body.check_supported()
        _check_model(settings, engine, body.model)
        reqs = [_build(engine, settings, p, body, body.max_tokens, chat=False) for p in body.prompts()]
        return await serve_requests(engine, settings, m, reqs, body, CompletionFormat(model_id(settings, engine)))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, engine: EngineDep, settings: SettingsDep, m: MetricsDep):
        body.check_supported()
        _check_model(settings, engine, body.model)
        text = engine.comp.chat_prompt([msg.as_template_dict() for msg in body.messages])
        reqs = [_build(engine, settings, text, body, body.effective_max_tokens(), chat=True)]
        return await serve_requests(engine, settings, m, reqs, body, ChatFormat(model_id(settings, engine)))


def _model_card(settings: ServeSettings, engine: Engine) -> dict:
    comp = engine.comp
    withdrawn = engine.withdrawn
    return {"id": model_id(settings, engine), "object": "model", "created": 0, "owned_by": "expertmesh",
            "composition": {"name": comp.name, "version": comp.version, "top_k": comp.top_k,
                            "experts": [{"name": n, "tags": comp.tags.get(n, []),
                                         "status": "withdrawn" if n in withdrawn else "active"}
                                        for n in comp.members]}}


def _check_model(settings: ServeSettings, engine: Engine, name: str) -> None:
    mid = model_id(settings, engine)
    if name != mid:
        raise ModelNotFoundError(f"model {name!r} is not served here; this server serves {mid!r}",
                                 detail={"field": "model", "available": [mid]})


def _build(engine: Engine, settings: ServeSettings, prompt, body: _Common, max_tokens: int | None, *,
           chat: bool) -> GenerationRequest:
    comp = engine.comp
    if isinstance(prompt, str):
        text, ids = prompt, comp.encode(prompt, add_special_tokens=not chat)
    else:
        bad = [t for t in prompt if not 0 <= t < comp.vocab_size]
        if bad:
            raise InvalidInputError(f"prompt holds token ids outside [0, {comp.vocab_size}): {bad[:5]}",
                                    detail={"field": "prompt"})
        text, ids = comp.decode(prompt), list(prompt)
    if max_tokens is None:
        max_tokens = max(1, min(settings.default_max_tokens, settings.max_context - len(ids)))
    elif max_tokens > settings.max_tokens_limit:
        raise InvalidInputError(f"max_tokens={max_tokens} exceeds this server's limit of "
                                f"{settings.max_tokens_limit}", detail={"field": "max_tokens"})
    params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                            stop=body.stop_list(), ignore_eos=body.ignore_eos)
    return GenerationRequest(text, ids, params, body.selection(), trace_tokens=body.return_routing == "tokens")
