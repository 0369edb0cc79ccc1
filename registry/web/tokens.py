"""An owner issues tokens for itself from its page, with at most the scopes of the token it logged in with.

The JSON API keeps token issuing to admins (``auth.create_token``); this is the narrower rule a self-service page
needs: no owner can widen its own access (admin is never issued), and the new token is audited like any other.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from expertmesh.errors import PermissionDeniedError
from registry import events
from registry.auth import ADMIN, READ, Principal, get_owner, hash_token, new_token_secret, parse_scopes
from registry.models import Token

MAX_LABEL = 200


def issue_own_token(session: Session, actor: Principal, scopes: list[str], label: str = "") -> tuple[Token, str]:
    """Return the new row and its secret (shown once). Scopes must be a subset of the actor's own."""
    if actor.owner_id is None:
        raise PermissionDeniedError("the configured admin token has no owner; issue tokens with "
                                    "`expertmesh registry create-token`")
    wanted = parse_scopes(scopes)
    have = set(actor.scopes) | {READ}    # every scope implies read (Principal.require)
    wider = [s for s in wanted if s == ADMIN or s not in have]
    if wider:
        mine = ", ".join(sorted(have - {ADMIN}))
        raise PermissionDeniedError(f"a token you issue may only have scopes you have ({mine}); not {', '.join(wider)}",
                                    detail={"field": "scopes"})
    owner = get_owner(session, actor.owner_name)
    secret = new_token_secret()
    token = Token(owner_id=owner.id, label=label.strip()[:MAX_LABEL], scopes=",".join(wanted),
                  token_hash=hash_token(secret), prefix=secret[:10])
    session.add(token)
    session.flush()
    events.audit(session, actor, "token.created", "owner", owner.name, subject_owner_id=owner.id,
                 detail={"token_id": token.id, "scopes": wanted, "label": token.label, "via": "web"})
    return token, secret
