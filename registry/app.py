"""The registry's app factory: ``create_app(settings)`` builds everything from one settings object.

Run it: ``expertmesh registry serve`` (or ``uvicorn --factory registry.app:app_from_env``). Every error leaves
through ``error_response``, the one place a library error becomes an HTTP status and the machine-readable body
``{"error": {"code", "message", "detail"}}``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from expertmesh.errors import (
    ExpertMeshError, InternalError, InvalidInputError, MethodNotAllowedError, NotFoundError, status_for,
)
from registry.api import accounts, compositions, experts, feed
from registry.context import Registry
from registry.publishing import clear_scratch
from registry.settings import RegistrySettings
from registry.store import ArtifactStore

log = logging.getLogger("expertmesh.registry")

def error_response(exc: ExpertMeshError) -> JSONResponse:
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status >= 500:
        log.error("registry error %s: %s", exc.code, exc.message)
    return JSONResponse(exc.to_body(), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ExpertMeshError)
    async def _library(_request: Request, exc: ExpertMeshError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        err = InvalidInputError(f"{'.'.join(first['loc'][1:]) or 'request'}: {first['msg']}",
                                detail={"errors": errors})
        return JSONResponse(err.to_body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err: ExpertMeshError = NotFoundError("no such endpoint; see /openapi.json")
        elif exc.status_code == 405:
            err = MethodNotAllowedError("method not allowed on this endpoint; see /openapi.json")
        else:
            err = ExpertMeshError(str(exc.detail))
            err.code = f"http_{exc.status_code}"
        return JSONResponse(err.to_body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in the registry")
        err = InternalError(f"internal error ({type(exc).__name__}); see the registry log")
        return JSONResponse(err.to_body(), status_code=500)


def create_app(settings: RegistrySettings, *, store: ArtifactStore | None = None) -> FastAPI:
    reg = Registry.build(settings, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_startup:
            reg.migrate()
        clear = getattr(reg.store, "clear_leftovers", None)
        if clear is not None:
            clear()
        clear_scratch(settings.scratch_dir)
        log.info("registry up: %s", settings.describe())
        try:
            yield
        finally:
            reg.close()

    app = FastAPI(title="expertmesh registry", version="1", lifespan=lifespan,
                  description="Owners publish LoRA experts; coordinators and inference servers find them. "
                              "Errors: {\"error\": {\"code\", \"message\", \"detail\"}}.")
    app.state.registry = reg
    _install_error_handlers(app)
    for module in (feed, accounts, experts, compositions):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory registry.app:app_from_env`` (settings from EXPERTMESH_REGISTRY_* variables)."""
    return create_app(RegistrySettings.from_env())
