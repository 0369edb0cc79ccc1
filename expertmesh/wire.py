"""The registry's HTTP answers, defined once: stdlib dataclasses that the client parses into and that the registry
derives its pydantic response models from (registry/schemas.py), so the two cannot drift.

    from expertmesh import wire
    v = wire.from_json(wire.ExpertVersionPublic, response.json())   # nested dataclasses, aware datetimes
    v.files["manifest.json"].sha256

Rules of this module (it sits in the core, below both the client and the service):
- stdlib only: no pydantic, no fastapi, no torch; a registry-only install and the client both import it.
- Class names are the OpenAPI component names and field names are the JSON field names; field order is the
  schema's property order. ``field(metadata={"description": ...})`` is the schema's description.
- Timestamps are ``datetime`` (UTC, aware) on both sides; the wire carries ISO 8601 text.
- Requests are not here: the client sends plain dicts, and their validation rules (patterns, bounds) belong to the
  service (registry/schemas.py).
- ``from_json`` ignores keys it does not know, so a newer registry that adds a field does not break an older client.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from expertmesh.errors import RemoteError

_wire = dataclass(frozen=True, kw_only=True)   # kw_only: a subclass may add required fields after defaulted ones


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"description": text}, **kw)


# --- accounts ----------------------------------------------------------------------------------------------------

@_wire
class OwnerPublic:
    name: str
    display_name: str
    created_at: dt.datetime


@_wire
class TokenPublic:
    id: int
    owner: str
    label: str
    scopes: list[str]
    prefix: str
    created_at: dt.datetime
    revoked_at: Optional[dt.datetime] = None


@_wire
class TokenIssued(TokenPublic):
    token: str = _doc("the secret; shown once, only its hash is stored", repr=False)


@_wire
class WhoAmI:
    owner: str
    scopes: list[str]
    is_admin: bool
    token_id: Optional[int] = None


# --- experts -----------------------------------------------------------------------------------------------------

@_wire
class FileInfo:
    sha256: str
    size: int


@_wire
class ExpertVersionPublic:
    name: str
    owner: str
    version: int
    status: str = _doc("effective status: withdrawn if the version or the whole expert is")
    version_status: str
    status_reason: str
    identity: str = _doc("sha256 of the canonical manifest without its version field")
    base_fingerprint: str
    manifest_sha256: str
    size_bytes: int
    archive_bytes: int
    files: dict[str, FileInfo]
    manifest: dict[str, Any]
    created_at: dt.datetime


@_wire
class ExpertSummary:
    name: str
    owner: str
    status: str
    status_reason: str
    latest_version: int
    domain_tags: list[str]
    description: str
    base_fingerprint: str
    updated_at: dt.datetime


@_wire
class ExpertList:
    items: list[ExpertSummary]
    total: int
    limit: int
    offset: int
    revision: int


@_wire
class ExpertPublic:
    name: str
    owner: str
    status: str
    status_reason: str
    latest_version: int
    latest_active_version: Optional[int]
    domain_tags: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    versions: list[ExpertVersionPublic]


@_wire
class PublishResult:
    name: str
    version: int
    created: bool = _doc("false: identical content was already published as this version")
    identity: str
    status: str
    revision: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@_wire
class StatusResult:
    name: str
    version: Optional[int]
    status: str
    changed: bool
    revision: int


# --- change feed and audit ---------------------------------------------------------------------------------------

@_wire
class ChangeEventPublic:
    revision: int
    kind: str
    name: str
    version: Optional[int]
    at: dt.datetime
    detail: dict[str, Any]


@_wire
class ChangesPage:
    revision: int = _doc("current registry revision")
    events: list[ChangeEventPublic]
    next_since: int = _doc("pass as since= to continue")


@_wire
class RevisionPublic:
    revision: int


@_wire
class AuditEntryPublic:
    id: int
    at: dt.datetime
    actor: str
    ip: str
    action: str
    subject_type: str
    subject_name: str
    subject_version: Optional[int]
    detail: dict[str, Any]


# --- compositions ------------------------------------------------------------------------------------------------

@_wire
class CompositionMemberPublic:
    name: str
    version: int
    status: str = _doc("current effective status of that expert version: active, withdrawn, missing")
    status_reason: str = ""


@_wire
class CompositionVersionPublic:
    name: str
    owner: str
    version: int
    identity: str
    router_type: str
    base_fingerprint: str
    document_sha256: str
    size_bytes: int
    archive_bytes: int
    files: dict[str, FileInfo]
    document: dict[str, Any]
    members: list[CompositionMemberPublic]
    all_members_active: bool
    created_at: dt.datetime

    @property
    def active_members(self) -> list[CompositionMemberPublic]:
        """Members a server may load now (withdrawn ones dropped: the owner's opt-out wins)."""
        return [m for m in self.members if m.status == "active"]


@_wire
class CompositionSummary:
    name: str
    owner: str
    latest_version: int
    router_type: str
    updated_at: dt.datetime


@_wire
class CompositionPublishResult:
    name: str
    version: int
    created: bool
    identity: str
    revision: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


# --- service -----------------------------------------------------------------------------------------------------

@_wire
class Health:
    status: str
    database: str
    revision: int
    store: str = "ok"
    base_fingerprint: Optional[str]


RESPONSES: tuple[type, ...] = (
    OwnerPublic, TokenPublic, TokenIssued, WhoAmI, FileInfo, ExpertVersionPublic, ExpertSummary, ExpertList,
    ExpertPublic, PublishResult, StatusResult, ChangeEventPublic, ChangesPage, RevisionPublic, AuditEntryPublic,
    CompositionMemberPublic, CompositionVersionPublic, CompositionSummary, CompositionPublishResult, Health,
)


# --- parsing -----------------------------------------------------------------------------------------------------

@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type (the annotations are strings under ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_json(cls: type, data: Any) -> Any:
    """Build ``cls`` (a dataclass of this module) from decoded JSON; unknown keys are ignored. An answer that is not
    a ``cls`` (a required field missing, a list where an object belongs, a bad timestamp) is a RemoteError, the
    client's one error for a service that answered with something else than it promised."""
    try:
        return _convert(cls, data)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        raise RemoteError(f"the registry's answer is not a valid {cls.__name__}: {e}") from None


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        types_ = field_types(tp)
        return tp(**{k: _convert(types_[k], v) for k, v in value.items() if k in types_})
    if tp is dt.datetime:
        # fromisoformat reads pydantic's "...Z" since Python 3.11
        return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return [_convert(args[0], v) for v in value]
    if origin is dict:
        return {k: _convert(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):   # Optional[X]: None was handled above
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value)
    return value
