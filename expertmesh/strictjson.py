"""Strict JSON: how every byte a client sends as JSON is parsed (package files, request bodies).

Python's ``json`` accepts things that are not JSON or that break what stores the value later:

- ``NaN``/``Infinity`` (and ``1e999``, which parses to inf): not JSON; SQLite's JSON functions fail on them;
- a lone surrogate (``"\\ud800"``): cannot be encoded as UTF-8, so storing or re-serialising it fails;
- NUL (``"\\u0000"``) in a string or key: PostgreSQL ``text``/``json`` cannot hold it;
- deep nesting: the parser recurses once per level, so 100,000 ``[`` raise RecursionError.

``loads`` refuses all of them with the error class the caller names (400 for a request body, 422 for a package
file), and the message gives the path of the offending value (``$.training.notes[3]``).
``StrictJSONMiddleware`` applies the same check to request bodies of an ASGI app, and refuses NUL in the
path and query string, before the framework parses anything. It is raw ASGI: no web framework is imported.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Awaitable, Callable
from urllib.parse import unquote_to_bytes

from expertmesh.errors import ExpertMeshError, InvalidInputError, PayloadTooLargeError

MAX_DEPTH = 32                       # objects/arrays inside each other; real manifests nest 3 deep
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class _Refused(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} overflows a 64-bit float")
    return value


def _describe(s: str) -> str:
    ch = _BAD_CHARS.search(s)
    assert ch is not None
    return "NUL (\\u0000)" if ch.group() == "\x00" else f"a lone surrogate (\\u{ord(ch.group()):04x})"


def check_value(value: Any, *, what: str, error: type[ExpertMeshError] = InvalidInputError,
                max_depth: int = MAX_DEPTH) -> Any:
    """Walk a parsed value (iteratively: no recursion to exhaust) and refuse bad strings or deep nesting."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            if _BAD_CHARS.search(v):
                raise error(f"{what}: {path} contains {_describe(v)}, which is not allowed in a string",
                            detail={"field": path})
        elif isinstance(v, float) and not math.isfinite(v):
            raise error(f"{what}: {path} is {v}, not a finite number", detail={"field": path})
        elif isinstance(v, (dict, list)):
            if depth >= max_depth:
                raise error(f"{what}: {path} is nested deeper than {max_depth} levels", detail={"field": path})
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                if isinstance(k, str) and _BAD_CHARS.search(k):
                    raise error(f"{what}: a key in {path} contains {_describe(k)}", detail={"field": path})
                stack.append((child, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]", depth + 1))
    return value


def loads(data: bytes | str, *, what: str, error: type[ExpertMeshError] = InvalidInputError,
          max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON strictly; ``what`` names the document in the error ("manifest.json", "request body")."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLargeError(f"{what} is {len(data)} bytes; the limit is {max_bytes}",
                                   detail={"field": what, "limit": max_bytes})
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as e:
        raise error(f"{what} is not UTF-8: {e}", detail={"field": what}) from None
    except _Refused as e:
        raise error(f"{what}: {e}", detail={"field": what}) from None
    except RecursionError:
        raise error(f"{what} is nested deeper than {max_depth} levels", detail={"field": what}) from None
    except ValueError as e:   # JSONDecodeError, or an integer with more digits than Python converts
        raise error(f"{what} is not valid JSON: {e}", detail={"field": what}) from None
    return check_value(value, what=what, error=error, max_depth=max_depth)


# --- ASGI ------------------------------------------------------------------------------------------------------

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class StrictJSONMiddleware:
    """Refuse, with 400/413 and the error body, a JSON request body ``loads`` refuses, and NUL in the URL.

    Only bodies declared as JSON are read here (uploads of tars stream past untouched), at most ``max_bytes``
    of them; the body is then replayed to the app unchanged.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = 4 * 1024 * 1024):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _check_url(scope)
            if _is_json(scope):
                body = await _read_body(receive, self.max_bytes)
                if body.strip():
                    loads(body, what="request body")
                receive = _replay(body, receive)
        except ExpertMeshError as err:
            await _send_error(send, 413 if isinstance(err, PayloadTooLargeError) else 400, err)
            return
        await self.app(scope, receive, send)


def _check_url(scope: dict) -> None:
    if "\x00" in scope.get("path", ""):
        raise InvalidInputError("the URL path contains NUL (%00), which is not allowed", detail={"field": "path"})
    if b"\x00" in unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" ")):
        raise InvalidInputError("the query string contains NUL (%00), which is not allowed",
                                detail={"field": "query"})


def _is_json(scope: dict) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return b"json" in value.lower()
    return False


async def _read_body(receive: Callable[[], Awaitable[dict]], max_bytes: int) -> bytes:
    chunks, n = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        n += len(chunk)
        if n > max_bytes:
            raise PayloadTooLargeError(f"the JSON request body exceeds {max_bytes} bytes",
                                       detail={"field": "body", "limit": max_bytes})
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()   # after the body: wait for the disconnect as usual
    return replay


async def _send_error(send: Callable[[dict], Awaitable[None]], status: int, err: ExpertMeshError) -> None:
    payload = json.dumps(err.to_body()).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
