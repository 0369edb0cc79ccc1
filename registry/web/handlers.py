"""What every page handler does around its own work: find the session (or send the browser to log in), and turn
a library error into an HTML error page with the registry's status for it."""
from __future__ import annotations

from typing import Callable
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from expertmesh.errors import ExpertMeshError
from registry.context import Registry
from registry.web.render import Renderer
from registry.web.session import LoginRequired, WebSession, current_session

PageFn = Callable[[Registry, WebSession], Response]


def registry_of(request: Request) -> Registry:
    return request.app.state.registry


def renderer_of(request: Request) -> Renderer:
    return request.app.state.web


def safe_next(value: str | None) -> str:
    """Only a path on these pages; never another host (``//evil``) or a scheme (open-redirect guard)."""
    if not value or not value.startswith("/ui/") or value.startswith("//") or "\\" in value or len(value) > 500:
        return "/ui/"
    return value


def to_login(request: Request, ended: bool) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = f"/ui/login?next={quote(safe_next(here), safe='')}" + ("&ended=1" if ended else "")
    return RedirectResponse(url, status_code=303)


def run_page(request: Request, build: PageFn) -> Response:
    reg = registry_of(request)
    try:
        session = current_session(reg, request)
    except LoginRequired as e:
        return to_login(request, ended=bool(e.message))
    try:
        return build(reg, session)
    except ExpertMeshError as e:
        return renderer_of(request).error(request, e, session=session)
