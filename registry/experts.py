"""Experts: publish, list/search, show, download, withdraw and restore (the service layer behind the routes).

Versions are numbered per name 1, 2, 3... under a lock on the expert row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), backed by unique constraints on
(expert, version) and (expert, identity), so concurrent publishes neither collide nor duplicate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from expertmesh.errors import (
    ExpertWithdrawnError, InvalidInputError, NotFoundError, PermissionDeniedError, UnknownExpertError,
)
from expertmesh.expert.manifest import ALLOWED_FILES, MANIFEST_FILE
from expertmesh.expert.package import verify_package
from expertmesh.validate import parse_version
from registry import events
from expertmesh.archive import tar_size
from registry.auth import PUBLISH, READ, Principal, valid_name
from registry.context import Registry
from registry.models import ACTIVE, WITHDRAWN, Expert, ExpertFile, ExpertTag, ExpertVersion, Owner, utcnow
from registry.publishing import StagedBlobs, file_table, identity_of, stored_json, unpack
from registry.schemas import (
    ExpertList, ExpertPublic, ExpertSummary, ExpertVersionPublic, FileInfo, PublishResult, StatusResult,
)

STATUSES = (ACTIVE, WITHDRAWN, "all")
BlobEntry = tuple[str, int, str]   # file name, size, sha256


def effective_status(expert: Expert, version: ExpertVersion) -> tuple[str, str]:
    if expert.status == WITHDRAWN:
        return WITHDRAWN, expert.status_reason
    if version.status == WITHDRAWN:
        return WITHDRAWN, version.status_reason
    return ACTIVE, ""


parse_ref = parse_version   # one reading of a version reference, shared with the CLI (expertmesh.validate)


# --- publish ---------------------------------------------------------------------------------------------------

def check_can_publish(reg: Registry, principal: Principal, name: str) -> None:
    """Cheap checks before the body is read: scope, name syntax, and ownership of an existing name."""
    principal.require(PUBLISH)
    valid_name("name", name)
    with reg.db.read() as s:
        owner_id = s.scalar(select(Expert.owner_id).where(Expert.name == name))
    if owner_id is not None:
        principal.require_owner(owner_id, f"expert {name!r}")


def publish_expert(reg: Registry, principal: Principal, name: str, upload: Path) -> PublishResult:
    check_can_publish(reg, principal, name)
    with unpack(reg, upload, set(ALLOWED_FILES)) as pkg:
        manifest = verify_package(pkg, expected_fingerprint=reg.settings.base_fingerprint)
        if manifest.name != name:
            raise InvalidInputError(f"package is expert {manifest.name!r} but was uploaded as {name!r}",
                                    detail={"field": "name"})
        if not principal.is_admin and manifest.owner != principal.owner_name:
            raise PermissionDeniedError(f"manifest.owner is {manifest.owner!r} but this token belongs to "
                                        f"{principal.owner_name!r}; set owner to your owner name and re-package")
        doc = manifest.to_dict()
        doc.pop("version", None)
        identity = identity_of(doc)
        files = file_table(pkg, MANIFEST_FILE)
        staged = StagedBlobs(reg)
        try:
            for fname, (sha, _size) in files.items():
                staged.put_file(pkg / fname, sha)
            result, keep = reg.db.write_retrying(
                lambda s: _insert_version(s, principal, name, doc, identity, files, staged))
        except BaseException:
            staged.release()
            raise
        staged.release(keep)
        staged.ensure(sorted(keep))
        return result


def _insert_version(s: Session, principal: Principal, name: str, doc: dict[str, Any], identity: str,
                    files: dict[str, tuple[str, int]], staged: StagedBlobs) -> tuple[PublishResult, set[str]]:
    owner = s.scalar(select(Owner).where(Owner.name == doc["owner"]))
    if owner is None:
        raise NotFoundError(f"owner {doc['owner']!r} does not exist; an admin creates owners first")
    now = utcnow()
    expert = s.scalar(select(Expert).where(Expert.name == name).with_for_update())
    if expert is None:
        expert = Expert(name=name, owner_id=owner.id, status=ACTIVE, status_reason="", latest_version=0,
                        created_at=now, updated_at=now)
        s.add(expert)
        s.flush()   # a concurrent creator of the same name makes this raise; write_retrying retries
    elif expert.owner_id != owner.id:
        raise PermissionDeniedError(f"expert {name!r} belongs to another owner")
    existing = s.scalar(select(ExpertVersion).where(ExpertVersion.expert_id == expert.id,
                                                    ExpertVersion.identity == identity))
    if existing is not None:
        status, _ = effective_status(expert, existing)
        keep = {existing.manifest_sha256} | {sha for sha, _ in files.values()}
        return PublishResult(name=name, version=existing.version, created=False, identity=identity, status=status,
                             revision=events.current_revision(s)), keep
    version = expert.latest_version + 1
    stored = dict(doc, version=version)
    data = stored_json(stored)
    manifest_sha = staged.put_bytes(data)
    row = ExpertVersion(expert_id=expert.id, version=version, identity=identity,
                        base_fingerprint=doc["base_fingerprint"], manifest=stored, manifest_sha256=manifest_sha,
                        size_bytes=sum(size for _, size in files.values()) + len(data), status=ACTIVE,
                        status_reason="", created_at=now)
    s.add(row)
    s.flush()
    s.add_all([ExpertFile(version_id=row.id, filename=f, sha256=sha, size=size) for f, (sha, size) in files.items()])
    expert.latest_version = version
    expert.updated_at = now
    s.execute(delete(ExpertTag).where(ExpertTag.expert_id == expert.id))
    s.add_all([ExpertTag(expert_id=expert.id, tag=t) for t in sorted(set(doc.get("domain_tags") or []))])
    revision = events.record_change(s, events.EXPERT_PUBLISHED, name, version,
                                    {"owner": owner.name, "identity": identity})
    events.audit(s, principal, "expert.published", "expert", name, subject_version=version,
                 subject_owner_id=owner.id, detail={"identity": identity, "size_bytes": row.size_bytes})
    status, _ = effective_status(expert, row)
    keep = {manifest_sha} | {sha for sha, _ in files.values()}
    return PublishResult(name=name, version=version, created=True, identity=identity, status=status,
                         revision=revision), keep


# --- read ------------------------------------------------------------------------------------------------------

def _get_expert(s: Session, name: str, *, lock: bool = False) -> tuple[Expert, str]:
    valid_name("name", name)
    q = select(Expert).where(Expert.name == name)
    expert = s.scalar(q.with_for_update() if lock else q)
    if expert is None:
        raise UnknownExpertError(f"expert {name!r} is not in the registry", detail={"name": name})
    owner_name = s.scalar(select(Owner.name).where(Owner.id == expert.owner_id)) or "?"
    return expert, owner_name


def _version_public(expert: Expert, owner_name: str, v: ExpertVersion, files: list[ExpertFile]) -> ExpertVersionPublic:
    status, reason = effective_status(expert, v)
    sizes = [f.size for f in files]
    manifest_size = v.size_bytes - sum(sizes)
    return ExpertVersionPublic(
        name=expert.name, owner=owner_name, version=v.version, status=status, version_status=v.status,
        status_reason=reason, identity=v.identity, base_fingerprint=v.base_fingerprint,
        manifest_sha256=v.manifest_sha256, size_bytes=v.size_bytes, archive_bytes=tar_size(sizes + [manifest_size]),
        files={f.filename: FileInfo(sha256=f.sha256, size=f.size) for f in files}, manifest=v.manifest,
        created_at=events.as_utc(v.created_at),
    )


def _files_of(s: Session, version_ids: list[int]) -> dict[int, list[ExpertFile]]:
    out: dict[int, list[ExpertFile]] = {i: [] for i in version_ids}
    if version_ids:
        for f in s.scalars(select(ExpertFile).where(ExpertFile.version_id.in_(version_ids))
                           .order_by(ExpertFile.filename)):
            out[f.version_id].append(f)
    return out


def _resolve(s: Session, expert: Expert, version: int | None) -> ExpertVersion:
    if version is None:
        if expert.status == WITHDRAWN:
            raise ExpertWithdrawnError(f"expert {expert.name!r} is withdrawn by its owner: {expert.status_reason}",
                                       detail={"name": expert.name})
        row = s.scalar(select(ExpertVersion).where(ExpertVersion.expert_id == expert.id,
                                                   ExpertVersion.status == ACTIVE)
                       .order_by(ExpertVersion.version.desc()).limit(1))
        if row is None:
            raise ExpertWithdrawnError(f"every version of expert {expert.name!r} is withdrawn",
                                       detail={"name": expert.name})
        return row
    row = s.scalar(select(ExpertVersion).where(ExpertVersion.expert_id == expert.id,
                                               ExpertVersion.version == version))
    if row is None:
        raise UnknownExpertError(f"expert {expert.name}@{version} does not exist (latest is "
                                 f"{expert.latest_version})", detail={"name": expert.name, "version": version})
    return row


def list_experts(reg: Registry, principal: Principal, *, domain: str | None = None, owner: str | None = None,
                 status: str = ACTIVE, q: str | None = None, limit: int = 100, offset: int = 0) -> ExpertList:
    principal.require(READ)
    if status not in STATUSES:
        raise InvalidInputError(f"status={status!r} must be one of {', '.join(STATUSES)}", detail={"field": "status"})
    if not 1 <= limit <= reg.settings.list_limit_max or offset < 0:
        raise InvalidInputError(f"limit must be 1..{reg.settings.list_limit_max} and offset >= 0",
                                detail={"field": "limit"})
    # Plain columns (no ORM entities) and the description pulled out of the JSON by the database: this is the
    # hot path of every coordinator and dashboard, and per-row JSON parsing dominated it (1,000 experts).
    description = ExpertVersion.manifest["description"].as_string()
    query = (select(Expert.id, Expert.name, Owner.name.label("owner"), Expert.status, Expert.status_reason,
                    Expert.latest_version, Expert.updated_at, ExpertVersion.base_fingerprint,
                    description.label("description"))
             .join(Owner, Owner.id == Expert.owner_id)
             .join(ExpertVersion, and_(ExpertVersion.expert_id == Expert.id,
                                       ExpertVersion.version == Expert.latest_version)))
    if domain:
        query = query.where(Expert.id.in_(select(ExpertTag.expert_id).where(ExpertTag.tag == valid_name("domain", domain))))
    if owner:
        query = query.where(Owner.name == valid_name("owner", owner))
    if status != "all":
        query = query.where(Expert.status == status)
    if q:
        query = query.where(Expert.name.contains(q[:64], autoescape=True))
    with reg.db.read() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = s.execute(query.order_by(Expert.name).limit(limit).offset(offset)).all()
        ids = [r.id for r in rows]
        tags: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for eid, tag in s.execute(select(ExpertTag.expert_id, ExpertTag.tag).where(ExpertTag.expert_id.in_(ids))
                                      .order_by(ExpertTag.tag)):
                tags[eid].append(tag)
        revision = events.current_revision(s)
    items = [ExpertSummary(name=r.name, owner=r.owner, status=r.status, status_reason=r.status_reason,
                           latest_version=r.latest_version, domain_tags=tags[r.id],
                           description=(r.description or "")[:500], base_fingerprint=r.base_fingerprint,
                           updated_at=events.as_utc(r.updated_at)) for r in rows]
    return ExpertList(items=items, total=total, limit=limit, offset=offset, revision=revision)


def show_expert(reg: Registry, principal: Principal, name: str) -> ExpertPublic:
    principal.require(READ)
    with reg.db.read() as s:
        expert, owner_name = _get_expert(s, name)
        versions = list(s.scalars(select(ExpertVersion).where(ExpertVersion.expert_id == expert.id)
                                  .order_by(ExpertVersion.version)))
        files = _files_of(s, [v.id for v in versions])
        tags = list(s.scalars(select(ExpertTag.tag).where(ExpertTag.expert_id == expert.id).order_by(ExpertTag.tag)))
    public = [_version_public(expert, owner_name, v, files[v.id]) for v in versions]
    active = [v.version for v in public if v.status == ACTIVE]
    return ExpertPublic(name=expert.name, owner=owner_name, status=expert.status, status_reason=expert.status_reason,
                        latest_version=expert.latest_version, latest_active_version=max(active) if active else None,
                        domain_tags=tags, created_at=events.as_utc(expert.created_at),
                        updated_at=events.as_utc(expert.updated_at), versions=public)


def get_version(reg: Registry, principal: Principal, name: str, ref: str | int | None) -> ExpertVersionPublic:
    principal.require(READ)
    with reg.db.read() as s:
        expert, owner_name = _get_expert(s, name)
        row = _resolve(s, expert, parse_ref(ref))
        return _version_public(expert, owner_name, row, _files_of(s, [row.id])[row.id])


def archive_entries(reg: Registry, principal: Principal, name: str,
                    ref: str | int | None) -> tuple[ExpertVersionPublic, list[BlobEntry]]:
    """What a download streams: (file name, size, sha256) of each file. A withdrawn version is served
    only to its owner and admins."""
    principal.require(READ)
    with reg.db.read() as s:
        expert, owner_name = _get_expert(s, name)
        row = _resolve(s, expert, parse_ref(ref))
        info = _version_public(expert, owner_name, row, _files_of(s, [row.id])[row.id])
        owner_id = expert.owner_id
    if info.status == WITHDRAWN and not (principal.is_admin or principal.owner_id == owner_id):
        raise ExpertWithdrawnError(f"expert {name}@{info.version} is withdrawn by its owner: {info.status_reason}",
                                   detail={"name": name, "version": info.version})
    blobs = [(f, fi.size, fi.sha256) for f, fi in info.files.items()]
    blobs.append((MANIFEST_FILE, info.size_bytes - sum(fi.size for fi in info.files.values()), info.manifest_sha256))
    return info, blobs


# --- withdraw / restore ----------------------------------------------------------------------------------------

def set_status(reg: Registry, principal: Principal, name: str, *, withdraw: bool, reason: str,
               version: int | None = None) -> StatusResult:
    """Withdraw (global opt-out) or restore a whole expert or one version; idempotent."""
    principal.require(PUBLISH)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInputError("a reason is required", detail={"field": "reason"})
    target = WITHDRAWN if withdraw else ACTIVE

    def change(s: Session) -> StatusResult:
        expert, _ = _get_expert(s, name, lock=True)
        principal.require_owner(expert.owner_id, f"expert {name!r}")
        obj: Expert | ExpertVersion = expert if version is None else _resolve(s, expert, version)
        if obj.status == target:
            return StatusResult(name=name, version=version, status=target, changed=False,
                                revision=events.current_revision(s))
        now = utcnow()
        obj.status, obj.status_reason, obj.status_changed_at = target, reason, now
        expert.updated_at = now
        kind = events.EXPERT_WITHDRAWN if withdraw else events.EXPERT_RESTORED
        scope = "expert" if version is None else "version"
        revision = events.record_change(s, kind, name, version, {"reason": reason, "scope": scope})
        events.audit(s, principal, kind, "expert", name, subject_version=version, subject_owner_id=expert.owner_id,
                     detail={"reason": reason, "scope": scope})
        return StatusResult(name=name, version=version, status=target, changed=True, revision=revision)

    return reg.db.write_retrying(change)
