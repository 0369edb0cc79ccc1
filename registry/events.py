"""Change feed and audit log, both written inside the transaction that makes the change.

Change feed: ``bump_revision`` increments the single ``registry_state`` row. On PostgreSQL that UPDATE holds
the row lock until commit, so state-changing transactions commit in revision order; on SQLite writers are
serialised anyway. A client that has seen revision N and asks for ``since=N`` therefore never misses an event.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry.models import AuditEntry, Change, RegistryState, utcnow
from registry.principal import Principal

EXPERT_PUBLISHED = "expert.published"
EXPERT_WITHDRAWN = "expert.withdrawn"
EXPERT_RESTORED = "expert.restored"
COMPOSITION_STORED = "composition.stored"


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every timestamp we write is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def bump_revision(session: Session) -> int:
    return int(session.execute(
        update(RegistryState).where(RegistryState.id == 1).values(revision=RegistryState.revision + 1)
        .returning(RegistryState.revision)
    ).scalar_one())


def record_change(session: Session, kind: str, name: str, version: int | None = None,
                  detail: dict[str, Any] | None = None) -> int:
    revision = bump_revision(session)
    session.add(Change(revision=revision, kind=kind, name=name, version=version, at=utcnow(), detail=detail or {}))
    return revision


def current_revision(session: Session) -> int:
    return int(session.scalar(select(RegistryState.revision).where(RegistryState.id == 1)) or 0)


def changes_since(session: Session, since: int, limit: int) -> list[Change]:
    return list(session.scalars(
        select(Change).where(Change.revision > since).order_by(Change.revision).limit(limit)))


def audit(session: Session, actor: Principal, action: str, subject_type: str, subject_name: str, *,
          subject_version: int | None = None, subject_owner_id: int | None = None,
          detail: dict[str, Any] | None = None) -> None:
    session.add(AuditEntry(
        at=utcnow(), actor=actor.owner_name, token_id=actor.token_id, ip=actor.ip[:64], action=action,
        subject_type=subject_type, subject_name=subject_name, subject_version=subject_version,
        subject_owner_id=subject_owner_id, detail=detail or {},
    ))


def read_audit(session: Session, actor: Principal, *, subject: str | None = None, limit: int = 100,
               before: int | None = None) -> list[AuditEntry]:
    """Newest first. An admin sees everything; an owner sees entries about its own experts and account."""
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if not actor.is_admin:
        q = q.where(AuditEntry.subject_owner_id == actor.owner_id)
    if subject is not None:
        q = q.where(AuditEntry.subject_name == subject)
    if before is not None:
        q = q.where(AuditEntry.id < before)
    return list(session.scalars(q))
