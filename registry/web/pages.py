"""Read pages: the catalogue, an expert, the compositions and one composition; static assets; the /ui 404."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response

from expertmesh.errors import InvalidInputError, NotFoundError
from registry import compositions as comp_svc
from registry import experts as expert_svc
from registry.auth import PUBLISH
from registry.context import Registry
from registry.models import ACTIVE
from registry.web import queries
from registry.web.handlers import renderer_of, run_page
from registry.web.heatmap import heat_map
from registry.web.session import WebSession

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE_SIZE = 50


def _opt(value: Optional[str]) -> Optional[str]:
    value = (value or "").strip()
    return value or None


def _offset(value: str) -> int:
    try:
        n = int(value or 0)
    except ValueError:
        raise InvalidInputError(f"offset={value!r} must be a whole number") from None
    if n < 0:
        raise InvalidInputError("offset must be >= 0")
    return n


def may_change(session: WebSession, owner: str) -> bool:
    """Whether the withdraw/restore buttons show: the owner itself with publish scope, or an admin."""
    p = session.principal
    return p.is_admin or (p.owner_name == owner and PUBLISH in p.scopes)


@router.get("/static/{name}")
def static(name: str, request: Request) -> Response:
    r = renderer_of(request)
    if name not in r.static:
        return r.error(request, NotFoundError(f"no static file {name!r}"))
    return r.asset(name)


@router.get("/")
def catalogue(request: Request, q: str = "", tag: str = "", owner: str = "", status: str = "all",
              offset: str = "0") -> Response:
    def build(reg: Registry, session: WebSession) -> Response:
        page = expert_svc.list_experts(reg, session.principal, q=_opt(q), domain=_opt(tag), owner=_opt(owner),
                                       status=status or "all", limit=PAGE_SIZE, offset=_offset(offset))
        return renderer_of(request).page(request, "catalogue.html", session=session, page=page,
                                         filters={"q": q, "tag": tag, "owner": owner, "status": status or "all"},
                                         statuses=expert_svc.STATUSES, page_size=PAGE_SIZE)
    return run_page(request, build)


@router.get("/experts/{name}")
def expert(name: str, request: Request) -> Response:
    def build(reg: Registry, session: WebSession) -> Response:
        info = expert_svc.show_expert(reg, session.principal, name)
        return renderer_of(request).page(
            request, "expert.html", session=session, expert=info, versions=list(reversed(info.versions)),
            used_by=queries.compositions_using(reg, session.principal, name),
            history=queries.status_history(reg, session.principal, name),
            can_change=may_change(session, info.owner), active=ACTIVE)
    return run_page(request, build)


@router.get("/compositions")
def compositions(request: Request) -> Response:
    def build(reg: Registry, session: WebSession) -> Response:
        return renderer_of(request).page(request, "compositions.html", session=session,
                                         items=comp_svc.list_compositions(reg, session.principal))
    return run_page(request, build)


@router.get("/compositions/{name}")
def composition(name: str, request: Request, version: str = "") -> Response:
    def build(reg: Registry, session: WebSession) -> Response:
        latest = comp_svc.get_composition(reg, session.principal, name)
        info = comp_svc.get_composition(reg, session.principal, name, _opt(version)) if _opt(version) else latest
        doc = info.document
        policy = doc.get("policy") if isinstance(doc.get("policy"), dict) else {}
        top_k = doc.get("top_k", policy.get("top_k"))
        return renderer_of(request).page(request, "composition.html", session=session, comp=info, top_k=top_k,
                                         selection=doc.get("selection", policy.get("selection")),
                                         heat=heat_map(doc), active=ACTIVE,
                                         versions=range(latest.version, 0, -1))
    return run_page(request, build)


@router.get("/{rest:path}")
def not_found(rest: str, request: Request) -> Response:
    return run_page(request, lambda reg, session: renderer_of(request).error(
        request, NotFoundError(f"there is no page /ui/{rest}"), session=session))
