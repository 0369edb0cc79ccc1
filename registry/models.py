"""SQLAlchemy 2 models of the registry metadata (the schema itself is owned by the Alembic migrations).

Blobs live in the artifact store, keyed by sha256; rows only reference them. Versions are immutable except
for their status. ``registry_state.revision`` is the change-feed counter: every state-changing transaction
bumps it with an UPDATE, which row-locks it until commit, so revisions become visible in order and a client
polling ``changes?since=N`` never skips one.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import (
    JSON, BigInteger, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    # Constraint names match the ones the migrations create, so autogenerate compares cleanly.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
    })


ACTIVE = "active"
WITHDRAWN = "withdrawn"


class Owner(Base):
    __tablename__ = "owners"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    scopes: Mapped[str] = mapped_column(String(200))           # comma-separated, sorted
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)   # sha256 hex of the secret
    prefix: Mapped[str] = mapped_column(String(16))            # first characters, to recognise a token
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True), nullable=True)


class Expert(Base):
    __tablename__ = "experts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE, index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    status_changed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExpertVersion(Base):
    __tablename__ = "expert_versions"
    __table_args__ = (
        UniqueConstraint("expert_id", "version", name="uq_expert_versions_version"),
        UniqueConstraint("expert_id", "identity", name="uq_expert_versions_identity"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id"))
    version: Mapped[int] = mapped_column(Integer)
    identity: Mapped[str] = mapped_column(String(64))          # sha256 of the canonical manifest minus version
    base_fingerprint: Mapped[str] = mapped_column(String(128))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Copied from the manifest at publish: the list query reads this column, never the JSON (migration 0002).
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    manifest_sha256: Mapped[str] = mapped_column(String(64))   # of the stored manifest.json (version set)
    size_bytes: Mapped[int] = mapped_column(BigInteger)        # sum of file sizes, manifest included
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    status_changed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExpertFile(Base):
    __tablename__ = "expert_files"
    version_id: Mapped[int] = mapped_column(ForeignKey("expert_versions.id"), primary_key=True)
    filename: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class ExpertTag(Base):
    """Domain tags of an expert's latest version (what list/search filters on)."""

    __tablename__ = "expert_tags"
    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Composition(Base):
    __tablename__ = "compositions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CompositionVersion(Base):
    __tablename__ = "composition_versions"
    __table_args__ = (
        UniqueConstraint("composition_id", "version", name="uq_composition_versions_version"),
        UniqueConstraint("composition_id", "identity", name="uq_composition_versions_identity"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    composition_id: Mapped[int] = mapped_column(ForeignKey("compositions.id"))
    version: Mapped[int] = mapped_column(Integer)
    identity: Mapped[str] = mapped_column(String(64))
    router_type: Mapped[str] = mapped_column(String(64))
    base_fingerprint: Mapped[str] = mapped_column(String(128))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)     # composition.json as stored (version set)
    document_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CompositionFile(Base):
    __tablename__ = "composition_files"
    version_id: Mapped[int] = mapped_column(ForeignKey("composition_versions.id"), primary_key=True)
    filename: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class CompositionMember(Base):
    __tablename__ = "composition_members"
    version_id: Mapped[int] = mapped_column(ForeignKey("composition_versions.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert_name: Mapped[str] = mapped_column(String(64), index=True)
    expert_version: Mapped[int] = mapped_column(Integer)


class Change(Base):
    __tablename__ = "changes"
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject", "subject_type", "subject_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))             # owner name, or "admin"
    token_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    ip: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_name: Mapped[str] = mapped_column(String(64))
    subject_version: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    subject_owner_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RegistryState(Base):
    __tablename__ = "registry_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
