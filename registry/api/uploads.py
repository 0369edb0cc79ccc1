"""The one upload path shared by experts and compositions: check, spool, hand to the service in a thread."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from expertmesh.errors import IntegrityError

from registry.auth import Principal
from registry.context import Registry
from registry.publishing import SHA_HEADER, check_declared_sha, receive_upload

T = TypeVar("T")

TAR_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "uncompressed tar of the package files (sorted names, regular files only); "
                       "header X-Content-SHA256 carries the sha256 of the body",
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [{"name": "X-Content-SHA256", "in": "header", "required": True, "schema": {"type": "string"}}],
}


async def handle_upload(request: Request, reg: Registry, principal: Principal, name: str,
                        precheck: Callable[[Registry, Principal, str], None],
                        publish: Callable[[Registry, Principal, str, Path], T]) -> T:
    declared = check_declared_sha(request.headers.get(SHA_HEADER))
    await run_in_threadpool(precheck, reg, principal, name)   # refuse before reading a byte of the body
    try:
        upload = await receive_upload(request.stream(), declared_sha=declared,
                                      declared_length=request.headers.get("content-length"),
                                      max_bytes=reg.settings.max_upload_bytes, scratch=reg.settings.scratch_dir)
    except ClientDisconnect:
        # receive_upload already removed the partial spool; the answer goes nowhere but keeps the log clean
        raise IntegrityError("the client disconnected before the upload was complete; nothing was stored") from None
    try:
        return await run_in_threadpool(publish, reg, principal, name, upload)
    finally:
        upload.unlink(missing_ok=True)
