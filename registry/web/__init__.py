"""Server-rendered pages for owners and coordinators, served by the registry itself under ``/ui``.

``mount(app)`` is all the app factory calls. The pages use the same service functions as the JSON API
(registry.experts, registry.compositions, registry.auth, registry.events), so every permission rule is the one the
API enforces; nothing here changes the JSON API. Jinja2 autoescapes every value; the only script is static/app.js
(a confirmation dialog), so the Content-Security-Policy can forbid inline script.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from registry.web.render import Renderer


def mount(app: FastAPI) -> None:
    from registry.web import account, pages

    app.state.web = Renderer.build()
    app.include_router(account.router)
    app.include_router(pages.router)   # last: it ends with the /ui catch-all 404 page

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
