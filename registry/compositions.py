"""Compositions: named, versioned sets of expert versions plus router artifacts, stored like experts.

A composition directory holds ``composition.json`` (at least name, router_type, base_fingerprint and members:
[{name, version}]), optionally ``router.safetensors`` and ``README.md``. The registry validates only that
much (the composition engine owns the full format), checks every member exists, is active and was trained on
the composition's base, and reports each member's *current* status on read, so a server can drop a member
that was withdrawn after the composition was stored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from expertmesh.errors import (
    BaseMismatchError, ExpertWithdrawnError, NotFoundError, PackageError, PermissionDeniedError, UnknownExpertError,
)
from expertmesh.expert.package import read_safetensors_header
from expertmesh.fileio import read_package_json
from registry import events
from expertmesh.archive import tar_size
from registry.auth import COORDINATE, READ, Principal, valid_name
from registry.context import Registry
from registry.experts import BlobEntry, effective_status, parse_ref
from registry.models import (
    ACTIVE, Composition, CompositionFile, CompositionMember, CompositionVersion, Expert, ExpertVersion, Owner, utcnow,
)
from registry.publishing import StagedBlobs, file_table, identity_of, stored_json, unpack
from registry.schemas import (
    CompositionMemberPublic, CompositionPublishResult, CompositionSummary, CompositionVersionPublic, FileInfo,
)

DOCUMENT_FILE = "composition.json"
ROUTER_FILE = "router.safetensors"
ALLOWED = {DOCUMENT_FILE, ROUTER_FILE, "README.md"}
MAX_MEMBERS = 1024


def read_document(root: Path) -> dict[str, Any]:
    """Load and loosely check composition.json; return it without any ``version`` field."""
    doc = read_package_json(root / DOCUMENT_FILE, f"a composition needs {DOCUMENT_FILE}")
    if not isinstance(doc, dict):
        raise PackageError(f"{DOCUMENT_FILE} must hold a JSON object")
    doc.pop("version", None)
    for key in ("name", "router_type", "base_fingerprint", "members"):
        if key not in doc:
            raise PackageError(f"{DOCUMENT_FILE} is missing {key!r}", detail={"field": key})
    valid_name("composition.name", doc["name"])
    valid_name("composition.router_type", doc["router_type"])
    if not isinstance(doc["base_fingerprint"], str) or len(doc["base_fingerprint"]) < 16:
        raise PackageError(f"{DOCUMENT_FILE}: base_fingerprint {doc['base_fingerprint']!r} is not a fingerprint")
    members = doc["members"]
    if not isinstance(members, list) or not members or len(members) > MAX_MEMBERS:
        raise PackageError(f"{DOCUMENT_FILE}: members must be a list of 1..{MAX_MEMBERS} {{name, version}} objects")
    seen: set[str] = set()
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("version"), int) or isinstance(m.get("version"), bool) \
                or m["version"] < 1:
            raise PackageError(f"{DOCUMENT_FILE}: members[{i}] must be {{\"name\": str, \"version\": int >= 1}}")
        valid_name(f"members[{i}].name", m.get("name"))
        if m["name"] in seen:
            raise PackageError(f"{DOCUMENT_FILE}: expert {m['name']!r} is listed twice")
        seen.add(m["name"])
    if (root / ROUTER_FILE).is_file():
        read_safetensors_header(root / ROUTER_FILE)
    return doc


def publish_composition(reg: Registry, principal: Principal, name: str, upload: Path) -> CompositionPublishResult:
    check_can_store(reg, principal, name)
    with unpack(reg, upload, ALLOWED) as root:
        doc = read_document(root)
        if doc["name"] != name:
            raise PackageError(f"composition.json names {doc['name']!r} but was uploaded as {name!r}")
        want = reg.settings.base_fingerprint
        if want is not None and doc["base_fingerprint"] != want:
            raise BaseMismatchError(f"composition is for base {doc['base_fingerprint'][:12]}, this registry serves "
                                    f"base {want[:12]}")
        files = file_table(root, DOCUMENT_FILE)
        identity = identity_of({"document": doc, "files": {f: sha for f, (sha, _) in files.items()}})
        staged = StagedBlobs(reg)
        try:
            for fname, (sha, _size) in files.items():
                staged.put_file(root / fname, sha)
            result, keep = reg.db.write_retrying(lambda s: _insert(s, principal, name, doc, identity, files, staged))
        except BaseException:
            staged.release()
            raise
        staged.release(keep)
        staged.ensure(sorted(keep))
        return result


def check_can_store(reg: Registry, principal: Principal, name: str) -> None:
    principal.require(COORDINATE)
    valid_name("name", name)
    with reg.db.read() as s:
        owner_id = s.scalar(select(Composition.owner_id).where(Composition.name == name))
    if owner_id is not None:
        principal.require_owner(owner_id, f"composition {name!r}")
    elif principal.owner_id is None:
        raise PermissionDeniedError("a new composition needs an owner: store it with an owner's coordinate token")


def _check_members(s: Session, doc: dict[str, Any]) -> None:
    for m in doc["members"]:
        row = s.execute(select(Expert, ExpertVersion).join(ExpertVersion, ExpertVersion.expert_id == Expert.id)
                        .where(Expert.name == m["name"], ExpertVersion.version == m["version"])).first()
        if row is None:
            raise UnknownExpertError(f"member {m['name']}@{m['version']} is not in the registry",
                                     detail={"name": m["name"], "version": m["version"]})
        status, reason = effective_status(*row)
        if status != ACTIVE:
            raise ExpertWithdrawnError(f"member {m['name']}@{m['version']} is withdrawn by its owner: {reason}",
                                       detail={"name": m["name"], "version": m["version"]})
        if row[1].base_fingerprint != doc["base_fingerprint"]:
            raise BaseMismatchError(f"member {m['name']}@{m['version']} was trained on base "
                                    f"{row[1].base_fingerprint[:12]}, the composition is for "
                                    f"{doc['base_fingerprint'][:12]}")


def _insert(s: Session, principal: Principal, name: str, doc: dict[str, Any], identity: str,
            files: dict[str, tuple[str, int]], staged: StagedBlobs) -> tuple[CompositionPublishResult, set[str]]:
    now = utcnow()
    comp = s.scalar(select(Composition).where(Composition.name == name).with_for_update())
    if comp is None:
        if principal.owner_id is None:
            raise PermissionDeniedError("a new composition needs an owner: store it with an owner's coordinate token")
        comp = Composition(name=name, owner_id=principal.owner_id, latest_version=0, created_at=now, updated_at=now)
        s.add(comp)
        s.flush()
    else:
        principal.require_owner(comp.owner_id, f"composition {name!r}")
    existing = s.scalar(select(CompositionVersion).where(CompositionVersion.composition_id == comp.id,
                                                         CompositionVersion.identity == identity))
    if existing is not None:
        keep = {existing.document_sha256} | {sha for sha, _ in files.values()}
        return CompositionPublishResult(name=name, version=existing.version, created=False, identity=identity,
                                        revision=events.current_revision(s)), keep
    _check_members(s, doc)
    version = comp.latest_version + 1
    stored = dict(doc, version=version)
    data = stored_json(stored)
    doc_sha = staged.put_bytes(data)
    row = CompositionVersion(composition_id=comp.id, version=version, identity=identity,
                             router_type=doc["router_type"], base_fingerprint=doc["base_fingerprint"],
                             document=stored, document_sha256=doc_sha,
                             size_bytes=sum(sz for _, sz in files.values()) + len(data), created_at=now)
    s.add(row)
    s.flush()
    s.add_all([CompositionFile(version_id=row.id, filename=f, sha256=sha, size=sz) for f, (sha, sz) in files.items()])
    s.add_all([CompositionMember(version_id=row.id, position=i, expert_name=m["name"], expert_version=m["version"])
               for i, m in enumerate(doc["members"])])
    comp.latest_version = version
    comp.updated_at = now
    revision = events.record_change(s, events.COMPOSITION_STORED, name, version,
                                    {"router_type": doc["router_type"], "members": len(doc["members"])})
    events.audit(s, principal, events.COMPOSITION_STORED, "composition", name, subject_version=version,
                 subject_owner_id=comp.owner_id, detail={"identity": identity})
    keep = {doc_sha} | {sha for sha, _ in files.values()}
    return CompositionPublishResult(name=name, version=version, created=True, identity=identity,
                                    revision=revision), keep


def _public(s: Session, comp: Composition, owner: str, row: CompositionVersion) -> CompositionVersionPublic:
    files = list(s.scalars(select(CompositionFile).where(CompositionFile.version_id == row.id)
                           .order_by(CompositionFile.filename)))
    rows = s.execute(
        select(CompositionMember, Expert, ExpertVersion)
        .outerjoin(Expert, Expert.name == CompositionMember.expert_name)
        .outerjoin(ExpertVersion, and_(ExpertVersion.expert_id == Expert.id,
                                       ExpertVersion.version == CompositionMember.expert_version))
        .where(CompositionMember.version_id == row.id).order_by(CompositionMember.position)).all()
    members = []
    for m, e, v in rows:
        status, reason = effective_status(e, v) if e is not None and v is not None else ("missing", "")
        members.append(CompositionMemberPublic(name=m.expert_name, version=m.expert_version, status=status,
                                               status_reason=reason))
    sizes = [f.size for f in files] + [row.size_bytes - sum(f.size for f in files)]
    return CompositionVersionPublic(
        name=comp.name, owner=owner, version=row.version, identity=row.identity, router_type=row.router_type,
        base_fingerprint=row.base_fingerprint, document_sha256=row.document_sha256, size_bytes=row.size_bytes,
        archive_bytes=tar_size(sizes), files={f.filename: FileInfo(sha256=f.sha256, size=f.size) for f in files},
        document=row.document, members=members, all_members_active=all(m.status == ACTIVE for m in members),
        created_at=events.as_utc(row.created_at),
    )


def get_composition(reg: Registry, principal: Principal, name: str, ref: str | int | None = None
                    ) -> CompositionVersionPublic:
    principal.require(READ)
    valid_name("name", name)
    version = parse_ref(ref)
    with reg.db.read() as s:
        row = s.execute(select(Composition, Owner.name).join(Owner, Owner.id == Composition.owner_id)
                        .where(Composition.name == name)).first()
        if row is None:
            raise NotFoundError(f"composition {name!r} is not in the registry", detail={"name": name})
        comp, owner = row
        v = version or comp.latest_version
        ver = s.scalar(select(CompositionVersion).where(CompositionVersion.composition_id == comp.id,
                                                        CompositionVersion.version == v))
        if ver is None:
            raise NotFoundError(f"composition {name}@{v} does not exist (latest is {comp.latest_version})",
                                detail={"name": name, "version": v})
        return _public(s, comp, owner, ver)


def list_compositions(reg: Registry, principal: Principal) -> list[CompositionSummary]:
    principal.require(READ)
    with reg.db.read() as s:
        rows = s.execute(select(Composition, Owner.name, CompositionVersion.router_type)
                         .join(Owner, Owner.id == Composition.owner_id)
                         .join(CompositionVersion, and_(CompositionVersion.composition_id == Composition.id,
                                                        CompositionVersion.version == Composition.latest_version))
                         .order_by(Composition.name)).all()
    return [CompositionSummary(name=c.name, owner=o, latest_version=c.latest_version, router_type=rt,
                               updated_at=events.as_utc(c.updated_at)) for c, o, rt in rows]


def archive_entries(reg: Registry, principal: Principal, name: str, ref: str | int | None
                    ) -> tuple[CompositionVersionPublic, list[BlobEntry]]:
    info = get_composition(reg, principal, name, ref)
    blobs = [(f, fi.size, fi.sha256) for f, fi in info.files.items()]
    blobs.append((DOCUMENT_FILE, info.size_bytes - sum(fi.size for fi in info.files.values()), info.document_sha256))
    return info, blobs
