"""Composition routes: store (coordinate scope), list, get by name / name@version, archive download."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from registry import compositions as svc
from registry.api.deps import PrincipalDep, RegistryDep
from registry.api.experts import archive_response
from expertmesh.validate import split_ref
from registry.api.uploads import TAR_BODY, handle_upload
from registry.schemas import CompositionPublishResult, CompositionSummary, CompositionVersionPublic

router = APIRouter(prefix="/v1/compositions", tags=["compositions"])


@router.post("/{name}/versions", response_model=CompositionPublishResult, status_code=201, openapi_extra=TAR_BODY,
             responses={200: {"model": CompositionPublishResult, "description": "identical content already stored"}})
async def store(name: str, request: Request, response: Response, reg: RegistryDep,
                principal: PrincipalDep) -> CompositionPublishResult:
    """Store a new version of a composition (coordinate scope). 201 new, 200 identical to a stored version."""
    result = await handle_upload(request, reg, principal, name, svc.check_can_store, svc.publish_composition)
    if not result.created:
        response.status_code = 200
    return result


@router.get("", response_model=list[CompositionSummary])
def list_compositions(reg: RegistryDep, principal: PrincipalDep) -> list[CompositionSummary]:
    return svc.list_compositions(reg, principal)


@router.get("/{ref}", response_model=CompositionVersionPublic)
def get(ref: str, reg: RegistryDep, principal: PrincipalDep) -> CompositionVersionPublic:
    """``name`` (latest version) or ``name@version``; each member carries its current status."""
    name, version = split_ref(ref)
    return svc.get_composition(reg, principal, name, version)


@router.get("/{name}/versions/{version}", response_model=CompositionVersionPublic)
def get_version(name: str, version: str, reg: RegistryDep, principal: PrincipalDep) -> CompositionVersionPublic:
    return svc.get_composition(reg, principal, name, version)


@router.get("/{name}/versions/{version}/archive", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}},
                             "description": "the composition as a tar; X-Document-SHA256 is composition.json's"}})
def download(name: str, version: str, reg: RegistryDep, principal: PrincipalDep) -> Response:
    info, blobs = svc.archive_entries(reg, principal, name, version)
    return archive_response(name, info.version, info.identity, info.document_sha256, info.archive_bytes, blobs,
                            reg.store)
