"""Owners and tokens (admin), and ``whoami``."""
from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from registry import auth
from registry.api.contract import ERROR_RESPONSES, Name, TokenId
from registry.api.deps import PrincipalDep, RegistryDep
from registry.events import as_utc
from registry.models import Owner, Token
from registry.schemas import OwnerCreate, OwnerPublic, TokenCreate, TokenIssued, TokenPublic, WhoAmI

router = APIRouter(prefix="/v1", tags=["accounts"], responses=ERROR_RESPONSES)


def owner_public(o: Owner) -> OwnerPublic:
    return OwnerPublic(name=o.name, display_name=o.display_name, created_at=as_utc(o.created_at))


def token_public(t: Token, owner: str) -> TokenPublic:
    return TokenPublic(id=t.id, owner=owner, label=t.label, scopes=t.scopes.split(","), prefix=t.prefix,
                       created_at=as_utc(t.created_at), revoked_at=as_utc(t.revoked_at))


@router.get("/whoami", response_model=WhoAmI)
def whoami(principal: PrincipalDep) -> WhoAmI:
    return WhoAmI(owner=principal.owner_name, scopes=sorted(principal.scopes), is_admin=principal.is_admin,
                  token_id=principal.token_id)


@router.post("/owners", response_model=OwnerPublic, status_code=201)
def create_owner(body: OwnerCreate, reg: RegistryDep, principal: PrincipalDep) -> OwnerPublic:
    with reg.db.write() as s:
        return owner_public(auth.create_owner(s, principal, body.name, body.display_name))


@router.get("/owners", response_model=list[OwnerPublic])
def list_owners(reg: RegistryDep, principal: PrincipalDep) -> list[OwnerPublic]:
    with reg.db.read() as s:
        q = select(Owner).order_by(Owner.name)
        if not principal.is_admin:
            q = q.where(Owner.id == principal.owner_id)
        return [owner_public(o) for o in s.scalars(q)]


@router.post("/owners/{owner}/tokens", response_model=TokenIssued, status_code=201)
def create_token(owner: Name, body: TokenCreate, reg: RegistryDep, principal: PrincipalDep) -> TokenIssued:
    with reg.db.write() as s:
        token, secret = auth.create_token(s, principal, owner, body.scopes, body.label)
        return TokenIssued(**token_public(token, owner).model_dump(), token=secret)


@router.get("/owners/{owner}/tokens", response_model=list[TokenPublic])
def list_tokens(owner: Name, reg: RegistryDep, principal: PrincipalDep) -> list[TokenPublic]:
    with reg.db.read() as s:
        return [token_public(t, owner) for t in auth.list_tokens(s, principal, owner)]


@router.delete("/tokens/{token_id}", response_model=TokenPublic)
def revoke_token(token_id: TokenId, reg: RegistryDep, principal: PrincipalDep) -> TokenPublic:
    with reg.db.write() as s:
        token = auth.revoke_token(s, principal, token_id)
        owner = s.get(Owner, token.owner_id)
        return token_public(token, owner.name if owner else "?")
