"""Who is asking, and with which scopes: the one type that auth (which creates it) and events (which records it
in the audit log) both use. It lives apart from both so neither imports the other for it.

Scopes: ``read`` < ``publish`` / ``coordinate``; ``admin`` may do everything (see registry/auth.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from expertmesh.errors import PermissionDeniedError

READ, PUBLISH, COORDINATE, ADMIN = "read", "publish", "coordinate", "admin"
SCOPES = (READ, PUBLISH, COORDINATE, ADMIN)


@dataclass(frozen=True)
class Principal:
    owner_id: int | None          # None for the settings admin token
    owner_name: str               # "admin" for the settings admin token
    scopes: frozenset[str]
    token_id: int | None = None
    ip: str = ""

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def require(self, scope: str) -> None:
        if self.is_admin or scope in self.scopes or (scope == READ and self.scopes):
            return
        raise PermissionDeniedError(f"this token lacks the {scope!r} scope (it has: {', '.join(sorted(self.scopes))})",
                                    detail={"required_scope": scope})

    def require_owner(self, owner_id: int, what: str) -> None:
        """Only the owner itself (or an admin) may change ``what``."""
        if not self.is_admin and self.owner_id != owner_id:
            raise PermissionDeniedError(f"{what} belongs to another owner; only that owner or an admin may change it")
