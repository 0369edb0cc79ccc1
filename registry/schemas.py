"""HTTP schemas, split by direction: request bodies (``*Create``/``*Request``) here, and responses (``*Public``)
derived from the stdlib dataclasses of ``expertmesh.wire``, which the client parses into: one definition, two users.

``response_model(wire.X)`` builds a pydantic model named ``X`` with the same fields, types, defaults and
descriptions, and nested wire types replaced by their models, so FastAPI validates, serialises and documents the
answers exactly as hand-written models would (tests/registry/test_wire.py compares both ways).
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, create_model

from expertmesh import wire
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


# --- responses (from expertmesh.wire) ---------------------------------------------------------------------------

@functools.cache
def response_model(cls: type) -> type[BaseModel]:
    """The pydantic model of one wire dataclass (cached: each nested type has one model, one schema component)."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kw: dict[str, Any] = {}
        if "description" in f.metadata:
            kw["description"] = f.metadata["description"]
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        fields[f.name] = (_model_type(wire.field_types(cls)[f.name]), Field(**kw))
    return create_model(cls.__name__, __module__=__name__, **fields)


def _model_type(tp: Any) -> Any:
    """``tp`` with every wire dataclass inside it (list[X], dict[str, X], Optional[X]) replaced by its model."""
    if dataclasses.is_dataclass(tp):
        return response_model(tp)
    args = typing.get_args(tp)
    if not args:
        return tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):   # Optional[X] or X | None, as wire.from_json reads both
        return Optional[_model_type(next(a for a in args if a is not type(None)))]
    return origin[tuple(_model_type(a) for a in args)]


OwnerPublic = response_model(wire.OwnerPublic)
TokenPublic = response_model(wire.TokenPublic)
TokenIssued = response_model(wire.TokenIssued)
WhoAmI = response_model(wire.WhoAmI)
FileInfo = response_model(wire.FileInfo)
ExpertVersionPublic = response_model(wire.ExpertVersionPublic)
ExpertSummary = response_model(wire.ExpertSummary)
ExpertList = response_model(wire.ExpertList)
ExpertPublic = response_model(wire.ExpertPublic)
PublishResult = response_model(wire.PublishResult)
StatusResult = response_model(wire.StatusResult)
ChangeEventPublic = response_model(wire.ChangeEventPublic)
ChangesPage = response_model(wire.ChangesPage)
RevisionPublic = response_model(wire.RevisionPublic)
CompositionMemberPublic = response_model(wire.CompositionMemberPublic)
CompositionVersionPublic = response_model(wire.CompositionVersionPublic)
CompositionSummary = response_model(wire.CompositionSummary)
CompositionPublishResult = response_model(wire.CompositionPublishResult)
AuditEntryPublic = response_model(wire.AuditEntryPublic)
Health = response_model(wire.Health)
