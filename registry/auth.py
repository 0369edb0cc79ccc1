"""Owners, API tokens and who may do what.

A token is ``emr_`` + 32 random bytes (url-safe base64); only its sha256 is stored (the secret has 256 bits of
entropy, so a plain hash is enough; no password-stretching is needed). Scopes:

    read        list, show and download active experts and compositions, poll the change feed
    publish     read + publish, withdraw and restore the owner's own experts; read its own audit log
    coordinate  read + store compositions
    admin       everything, for every owner (only issued locally: ``expertmesh registry create-token``)

The settings' ``admin_token`` is an admin principal that exists only in configuration (bootstrap).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from expertmesh.errors import (
    AuthenticationError, ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError,
)
from expertmesh.validate import check_name
from registry import events
from registry.models import Owner, Token, utcnow
from registry.principal import ADMIN, COORDINATE, PUBLISH, READ, SCOPES, Principal  # noqa: F401 (re-exported)

TOKEN_PREFIX = "emr_"


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(scopes: list[str] | str) -> list[str]:
    items = [s.strip() for s in scopes.split(",")] if isinstance(scopes, str) else [str(s).strip() for s in scopes]
    items = sorted({s for s in items if s})
    if not items:
        raise InvalidInputError(f"scopes must name at least one of {', '.join(SCOPES)}")
    bad = [s for s in items if s not in SCOPES]
    if bad:
        raise InvalidInputError(f"unknown scopes {bad}; use {', '.join(SCOPES)}", detail={"field": "scopes"})
    return items


def valid_name(field: str, value: str) -> str:
    """``check_name`` for request input: the same rule, reported as invalid input with the field named."""
    try:
        return check_name(field, value)
    except InvalidInputError as e:
        raise InvalidInputError(e.message, detail={"field": field}) from None


def authenticate(session: Session, authorization: str | None, *, admin_token: str | None, ip: str) -> Principal:
    if not authorization:
        raise AuthenticationError("missing Authorization header; send 'Authorization: Bearer <token>' "
                                  "(`expertmesh login` stores one)")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthenticationError("Authorization header must be 'Bearer <token>'")
    digest = hash_token(secret)
    if admin_token and hmac.compare_digest(digest, hash_token(admin_token)):
        return Principal(owner_id=None, owner_name="admin", scopes=frozenset({ADMIN}), ip=ip)
    row = session.execute(
        select(Token, Owner.name).join(Owner, Owner.id == Token.owner_id).where(Token.token_hash == digest)
    ).first()
    if row is None or row[0].revoked_at is not None:
        raise AuthenticationError("token is unknown or revoked")
    token, owner_name = row
    return Principal(owner_id=token.owner_id, owner_name=owner_name, scopes=frozenset(token.scopes.split(",")),
                     token_id=token.id, ip=ip)


# --- account operations (shared by the HTTP API and the local CLI) -------------------------------------------------

def create_owner(session: Session, actor: Principal, name: str, display_name: str = "") -> Owner:
    if not actor.is_admin:
        raise PermissionDeniedError("only an admin may create owners")
    valid_name("owner", name)
    if name == "admin":
        raise InvalidInputError("owner name 'admin' is reserved", detail={"field": "owner"})
    if session.scalar(select(Owner.id).where(Owner.name == name)) is not None:
        raise ConflictError(f"owner {name!r} already exists")
    owner = Owner(name=name, display_name=display_name[:200])
    session.add(owner)
    session.flush()
    events.audit(session, actor, "owner.created", "owner", name, subject_owner_id=owner.id)
    return owner


def get_owner(session: Session, name: str) -> Owner:
    owner = session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        raise NotFoundError(f"owner {name!r} does not exist")
    return owner


def create_token(session: Session, actor: Principal, owner_name: str, scopes: list[str] | str,
                 label: str = "") -> tuple[Token, str]:
    """Issue a token; return the row and the secret, which is shown once and never stored."""
    if not actor.is_admin:
        raise PermissionDeniedError("only an admin may issue tokens")
    scopes = parse_scopes(scopes)
    owner = get_owner(session, owner_name)
    secret = new_token_secret()
    token = Token(owner_id=owner.id, label=label[:200], scopes=",".join(scopes), token_hash=hash_token(secret),
                  prefix=secret[:10])
    session.add(token)
    session.flush()
    events.audit(session, actor, "token.created", "owner", owner.name, subject_owner_id=owner.id,
                 detail={"token_id": token.id, "scopes": scopes, "label": token.label})
    return token, secret


def list_tokens(session: Session, actor: Principal, owner_name: str) -> list[Token]:
    owner = get_owner(session, owner_name)
    actor.require_owner(owner.id, f"owner {owner_name!r}")
    return list(session.scalars(select(Token).where(Token.owner_id == owner.id).order_by(Token.id)))


def _may_revoke_other(actor: Principal, target: Token) -> bool:
    wider = set(parse_scopes(target.scopes)) - set(actor.scopes) - {READ}   # every scope implies read
    return target.owner_id == actor.owner_id and ADMIN not in target.scopes.split(",") and not wider


def revoke_token(session: Session, actor: Principal, token_id: int) -> Token:
    """An admin revokes any token, and any token may revoke itself. Otherwise a token may revoke only another token
    of its own owner that holds no scope it lacks, and never an admin token: the tokens it could have issued
    (registry/web/tokens.py). So a leaked read token cannot lock its owner out by revoking the owner's publish and
    admin tokens, and an owner can still retire a read token from the owner page."""
    if not actor.is_admin and actor.token_id != token_id:
        target = session.get(Token, token_id)
        if not (target is not None and _may_revoke_other(actor, target)):
            raise PermissionDeniedError("a token may revoke itself, or another token of its owner with no scope it "
                                        "lacks (never an admin token); an admin may revoke any",
                                        detail={"required_scope": ADMIN})
    token = session.get(Token, token_id)
    if token is None:
        raise NotFoundError(f"token {token_id} does not exist")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        owner = session.get(Owner, token.owner_id)
        events.audit(session, actor, "token.revoked", "owner", owner.name if owner else "?",
                     subject_owner_id=token.owner_id, detail={"token_id": token_id})
    return token
