"""Templates and the headers every page carries; error pages (404, 401, 403...) instead of JSON or tracebacks."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from expertmesh.errors import ExpertMeshError, status_for   # the one table, the same as registry/app.py uses
from registry.web.summaries import section

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# No inline script or style anywhere: app.js and app.css come from /ui/static, so a value that slipped past
# escaping still could not run. frame-ancestors 'none' stops the withdraw button being clickjacked.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def short(value: str | None, n: int = 12) -> str:
    return (value or "")[:n]


def when(value: dt.datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:19].replace("T", " ")
    return value.strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(n: int | None) -> str:
    size = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@dataclass
class Renderer:
    env: Environment
    static: dict[str, tuple[bytes, str]]

    @classmethod
    def build(cls) -> "Renderer":
        env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters.update(short=short, when=when, human_bytes=human_bytes)
        env.globals["section"] = section
        static = {"app.js": ((STATIC / "app.js").read_bytes(), "text/javascript"),
                  "app.css": ((STATIC / "app.css").read_bytes(), "text/css")}
        return cls(env=env, static=static)

    def page(self, request: Request, template: str, *, status: int = 200, session: Any = None,
             **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(request=request, session=session, status=status,
                                                              **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, request: Request, exc: ExpertMeshError, *, session: Any = None) -> HTMLResponse:
        status = status_for(exc)
        titles = {400: "Bad request", 401: "Not logged in", 403: "Not allowed", 404: "Not found",
                  409: "Conflict", 410: "Withdrawn", 422: "Cannot process"}
        return self.page(request, "error.html", status=status, session=session,
                         title=titles.get(status, "Error"), message=exc.message, code=exc.code)

    def asset(self, name: str) -> Response:
        body, media = self.static[name]
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=3600",
                                                         "X-Content-Type-Options": "nosniff"})
