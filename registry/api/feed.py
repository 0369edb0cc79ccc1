"""Health, the change feed (revision + changes) and the audit log."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from expertmesh.errors import ConfigError, StoreUnavailableError
from registry import events, startup
from registry.api.contract import ERROR_RESPONSES, Before, NameFilter, Since
from registry.api.deps import PrincipalDep, RegistryDep
from registry.auth import READ
from registry.schemas import AuditEntryPublic, ChangeEventPublic, ChangesPage, Health, RevisionPublic

router = APIRouter(tags=["feed"], responses=ERROR_RESPONSES)


@router.get("/healthz", response_model=Health)
def healthz(reg: RegistryDep) -> Health:
    """200 when the database answers and the store takes writes; else 503 with code database_unavailable or
    store_unavailable (the body says which, and why)."""
    store_dir = getattr(reg.store, "tmp_dir", None)
    if store_dir is not None:
        try:
            startup.check_writable(store_dir, "artifact store")
        except ConfigError as e:
            raise StoreUnavailableError(e.message) from None
    with reg.db.read() as s:        # an outage raises here; the app maps it to 503 database_unavailable
        revision = events.current_revision(s)
    return Health(status="ok", database=reg.db.dialect, revision=revision, store="ok",
                  base_fingerprint=reg.settings.base_fingerprint)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


@router.get("/v1/revision", response_model=RevisionPublic,
            responses={304: {"description": "unchanged since the ETag sent in If-None-Match"}})
def revision(request: Request, reg: RegistryDep, principal: PrincipalDep):  # noqa: ANN201
    """The registry revision: bumped by every state change. Poll with If-None-Match; 304 means unchanged."""
    principal.require(READ)
    with reg.db.read() as s:
        rev = events.current_revision(s)
    etag = f'"{rev}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(content=RevisionPublic(revision=rev).model_dump_json(), media_type="application/json",
                    headers=headers)


@router.get("/v1/changes", response_model=ChangesPage)
def changes(reg: RegistryDep, principal: PrincipalDep, since: Since = 0,
            limit: int = Query(500, ge=1, le=5000)) -> ChangesPage:
    """Events with revision > since, oldest first: expert.published/withdrawn/restored, composition.stored."""
    principal.require(READ)
    with reg.db.read() as s:
        rows = events.changes_since(s, since, limit)
        rev = events.current_revision(s)
        out = [ChangeEventPublic(revision=c.revision, kind=c.kind, name=c.name, version=c.version,
                                 at=events.as_utc(c.at), detail=c.detail or {}) for c in rows]
    return ChangesPage(revision=rev, events=out, next_since=out[-1].revision if out else since)


@router.get("/v1/audit", response_model=list[AuditEntryPublic])
def audit(reg: RegistryDep, principal: PrincipalDep, subject: NameFilter = None,
          limit: int = Query(100, ge=1, le=1000), before: Before = None
          ) -> list[AuditEntryPublic]:
    """Newest first. Admins see every entry; an owner sees those about its own experts and account."""
    with reg.db.read() as s:
        rows = events.read_audit(s, principal, subject=subject, limit=limit, before=before)
        return [AuditEntryPublic(id=a.id, at=events.as_utc(a.at), actor=a.actor, ip=a.ip, action=a.action,
                                 subject_type=a.subject_type, subject_name=a.subject_name,
                                 subject_version=a.subject_version, detail=a.detail or {}) for a in rows]
