"""Expert routes: publish, list/search, show, version metadata, archive download, withdraw, restore."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from registry import experts as svc
from registry.api.deps import PrincipalDep, RegistryDep
from registry.api.uploads import TAR_BODY, handle_upload
from expertmesh.errors import ExpertMeshError
from expertmesh.archive import iter_tar
from registry.models import ACTIVE
from registry.store import ArtifactStore
from registry.schemas import ExpertList, ExpertPublic, ExpertVersionPublic, PublishResult, StatusChangeRequest, \
    StatusResult

router = APIRouter(prefix="/v1/experts", tags=["experts"])
INLINE_ARCHIVE_BYTES = 4 * 1024 * 1024   # larger archives stream in 1 MiB chunks


@router.post("/{name}/versions", response_model=PublishResult, status_code=201, openapi_extra=TAR_BODY,
             responses={200: {"model": PublishResult, "description": "identical content was already published"}})
async def publish(name: str, request: Request, response: Response, reg: RegistryDep,
                  principal: PrincipalDep) -> PublishResult:
    """Publish a new version of an expert (publish scope, own names only). 201 new, 200 already published."""
    result = await handle_upload(request, reg, principal, name, svc.check_can_publish, svc.publish_expert)
    if not result.created:
        response.status_code = 200
    return result


@router.get("", response_model=ExpertList)
def list_experts(reg: RegistryDep, principal: PrincipalDep, domain: Optional[str] = None,
                 owner: Optional[str] = None, status: str = ACTIVE, q: Optional[str] = None,
                 limit: int = Query(100, ge=1), offset: int = Query(0, ge=0)) -> ExpertList:
    """List/search experts by domain tag, owner, status (active, withdrawn, all) and name substring."""
    return svc.list_experts(reg, principal, domain=domain, owner=owner, status=status, q=q, limit=limit,
                            offset=offset)


@router.get("/{name}", response_model=ExpertPublic)
def show(name: str, reg: RegistryDep, principal: PrincipalDep) -> ExpertPublic:
    """An expert with all its versions and their manifests."""
    return svc.show_expert(reg, principal, name)


@router.get("/{name}/versions/{version}", response_model=ExpertVersionPublic)
def get_version(name: str, version: str, reg: RegistryDep, principal: PrincipalDep) -> ExpertVersionPublic:
    """One version (a number, or ``latest`` for the newest active one)."""
    return svc.get_version(reg, principal, name, version)


def archive_response(name: str, version: int, identity: str, document_sha: str, size: int,
                     blobs: list[tuple[str, int, str]], store: ArtifactStore) -> Response:
    """Stream a stored package as the deterministic tar the client verifies (shared with compositions)."""
    missing = [sha for _, _, sha in blobs if not store.exists(sha)]
    if missing:   # checked before the status line goes out: a half-sent tar would look like a network fault
        raise ExpertMeshError(f"artifact store is missing {len(missing)} blob(s) of {name}@{version}")
    entries = [(f, sz, lambda sha=sha: store.open(sha)) for f, sz, sha in blobs]
    headers = {"Content-Length": str(size), "X-Document-SHA256": document_sha, "X-Version": str(version),
               "X-Identity": identity, "ETag": f'"{identity}"',
               "Content-Disposition": f'attachment; filename="{name}@{version}.tar"'}
    if size <= INLINE_ARCHIVE_BYTES:
        # Small packages: build the tar here (this route already runs in a worker thread) and send it in one
        # piece; streaming would cost one thread hop per chunk.
        return Response(content=b"".join(iter_tar(entries)), media_type="application/x-tar", headers=headers)
    return StreamingResponse(iter_tar(entries), media_type="application/x-tar", headers=headers)


@router.get("/{name}/versions/{version}/archive", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}},
                             "description": "the package as a tar; X-Document-SHA256 is the manifest's sha256"}})
def download(name: str, version: str, reg: RegistryDep, principal: PrincipalDep) -> Response:
    """Download a version as a tar. Withdrawn versions: 410 for everyone but the owner and admins."""
    info, blobs = svc.archive_entries(reg, principal, name, version)
    return archive_response(name, info.version, info.identity, info.manifest_sha256, info.archive_bytes, blobs,
                            reg.store)


@router.post("/{name}/withdraw", response_model=StatusResult)
def withdraw(name: str, body: StatusChangeRequest, reg: RegistryDep, principal: PrincipalDep) -> StatusResult:
    """Global opt-out of the whole expert (or one version); owner or admin only."""
    return svc.set_status(reg, principal, name, withdraw=True, reason=body.reason, version=body.version)


@router.post("/{name}/restore", response_model=StatusResult)
def restore(name: str, body: StatusChangeRequest, reg: RegistryDep, principal: PrincipalDep) -> StatusResult:
    """Opt back in; owner or admin only."""
    return svc.set_status(reg, principal, name, withdraw=False, reason=body.reason, version=body.version)
