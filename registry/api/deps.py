"""Dependencies injected into routes (overridable in tests via ``app.dependency_overrides``)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from registry.auth import Principal, authenticate
from registry.context import Registry


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def client_ip(request: Request, reg: Registry) -> str:
    if reg.settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded.strip():
            return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else ""


def get_principal(request: Request, reg: Annotated[Registry, Depends(get_registry)]) -> Principal:
    with reg.db.read() as s:
        return authenticate(s, request.headers.get("authorization"), admin_token=reg.settings.admin_token,
                            ip=client_ip(request, reg))


RegistryDep = Annotated[Registry, Depends(get_registry)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
