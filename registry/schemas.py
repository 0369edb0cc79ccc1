"""HTTP schemas, split by direction: request bodies (``*Create``/``*Request``) and responses (``*Public``)."""
from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from expertmesh.validate import NAME_MAX_CHARS, NAME_REGEX

INT32_MAX = 2**31 - 1
Scope = Literal["read", "publish", "coordinate", "admin"]


# --- requests --------------------------------------------------------------------------------------------------

class OwnerCreate(BaseModel):
    name: str = Field(pattern=NAME_REGEX, max_length=NAME_MAX_CHARS,
                      description="1-64 lowercase letters, digits, '.', '_' or '-'; no '..'")
    display_name: str = Field("", max_length=200)


class TokenCreate(BaseModel):
    scopes: list[Scope] = Field(min_length=1, max_length=4, description="any of read, publish, coordinate, admin")
    label: str = Field("", max_length=200)


class StatusChangeRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="why; recorded in the audit log and feed")
    version: Optional[int] = Field(None, ge=1, le=INT32_MAX, description="one version; omit for the whole expert name")


# --- responses -------------------------------------------------------------------------------------------------

class OwnerPublic(BaseModel):
    name: str
    display_name: str
    created_at: dt.datetime


class TokenPublic(BaseModel):
    id: int
    owner: str
    label: str
    scopes: list[str]
    prefix: str
    created_at: dt.datetime
    revoked_at: Optional[dt.datetime] = None


class TokenIssued(TokenPublic):
    token: str = Field(description="the secret; shown once, only its hash is stored")


class WhoAmI(BaseModel):
    owner: str
    scopes: list[str]
    is_admin: bool
    token_id: Optional[int] = None


class FileInfo(BaseModel):
    sha256: str
    size: int


class ExpertVersionPublic(BaseModel):
    name: str
    owner: str
    version: int
    status: str = Field(description="effective status: withdrawn if the version or the whole expert is")
    version_status: str
    status_reason: str
    identity: str = Field(description="sha256 of the canonical manifest without its version field")
    base_fingerprint: str
    manifest_sha256: str
    size_bytes: int
    archive_bytes: int
    files: dict[str, FileInfo]
    manifest: dict[str, Any]
    created_at: dt.datetime


class ExpertSummary(BaseModel):
    name: str
    owner: str
    status: str
    status_reason: str
    latest_version: int
    domain_tags: list[str]
    description: str
    base_fingerprint: str
    updated_at: dt.datetime


class ExpertList(BaseModel):
    items: list[ExpertSummary]
    total: int
    limit: int
    offset: int
    revision: int


class ExpertPublic(BaseModel):
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


class PublishResult(BaseModel):
    name: str
    version: int
    created: bool = Field(description="false: identical content was already published as this version")
    identity: str
    status: str
    revision: int


class StatusResult(BaseModel):
    name: str
    version: Optional[int]
    status: str
    changed: bool
    revision: int


class ChangeEventPublic(BaseModel):
    revision: int
    kind: str
    name: str
    version: Optional[int]
    at: dt.datetime
    detail: dict[str, Any]


class ChangesPage(BaseModel):
    revision: int = Field(description="current registry revision")
    events: list[ChangeEventPublic]
    next_since: int = Field(description="pass as since= to continue")


class RevisionPublic(BaseModel):
    revision: int


class CompositionMemberPublic(BaseModel):
    name: str
    version: int
    status: str = Field(description="current effective status of that expert version: active, withdrawn, missing")
    status_reason: str = ""


class CompositionVersionPublic(BaseModel):
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


class CompositionSummary(BaseModel):
    name: str
    owner: str
    latest_version: int
    router_type: str
    updated_at: dt.datetime


class CompositionPublishResult(BaseModel):
    name: str
    version: int
    created: bool
    identity: str
    revision: int


class AuditEntryPublic(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    ip: str
    action: str
    subject_type: str
    subject_name: str
    subject_version: Optional[int]
    detail: dict[str, Any]


class Health(BaseModel):
    status: str
    database: str
    revision: int
    store: str = "ok"
    base_fingerprint: Optional[str]
