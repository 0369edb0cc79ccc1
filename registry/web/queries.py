"""The two reads the pages need that the JSON API does not have: which compositions use an expert, and an
expert's withdraw/restore history. Both read public data only (the change feed, composition membership)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from registry import events
from registry.auth import READ, Principal
from registry.context import Registry
from registry.models import Change, Composition, CompositionMember, CompositionVersion, Owner

STATUS_KINDS = (events.EXPERT_WITHDRAWN, events.EXPERT_RESTORED)


@dataclass(frozen=True)
class UsedBy:
    composition: str
    version: int
    owner: str
    expert_version: int
    latest: bool


@dataclass(frozen=True)
class StatusEvent:
    revision: int
    at: dt.datetime | None
    kind: str            # expert.withdrawn | expert.restored
    version: int | None  # None: the whole expert
    reason: str


def compositions_using(reg: Registry, principal: Principal, expert: str) -> list[UsedBy]:
    """Every stored composition version that lists ``expert``, newest first."""
    principal.require(READ)
    q = (select(Composition.name, CompositionVersion.version, Owner.name, CompositionMember.expert_version,
                Composition.latest_version)
         .join(CompositionVersion, CompositionVersion.id == CompositionMember.version_id)
         .join(Composition, Composition.id == CompositionVersion.composition_id)
         .join(Owner, Owner.id == Composition.owner_id)
         .where(CompositionMember.expert_name == expert)
         .order_by(Composition.name, CompositionVersion.version.desc()))
    with reg.db.read() as s:
        return [UsedBy(c, v, o, ev, v == latest) for c, v, o, ev, latest in s.execute(q)]


def status_history(reg: Registry, principal: Principal, expert: str, *, limit: int = 200) -> list[StatusEvent]:
    """Withdrawals and restores of ``expert`` from the change feed (which every reader may poll), newest first."""
    principal.require(READ)
    q = (select(Change).where(Change.name == expert, Change.kind.in_(STATUS_KINDS))
         .order_by(Change.revision.desc()).limit(limit))
    with reg.db.read() as s:
        return [StatusEvent(c.revision, events.as_utc(c.at), c.kind, c.version, str((c.detail or {}).get("reason", "")))
                for c in s.scalars(q)]
