"""What the OpenAPI schema promises: parameter patterns and bounds, and every error answer a route can give.

The bounds are those of the columns behind them, so a request the schema allows never overflows the database
(versions, ids and offsets are 32-bit ``INTEGER``; revisions are 64-bit ``BIGINT``). Names follow
``expertmesh.validate`` (the handlers check them again with the same rule).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from fastapi import Path, Query
from pydantic import BaseModel, Field

from expertmesh.validate import NAME_MAX_CHARS, NAME_REGEX

INT32_MAX = 2**31 - 1          # INTEGER columns: versions, ids; also the largest offset worth asking for
INT64_MAX = 2**63 - 1          # BIGINT columns: revisions
VERSION_REGEX = r"^(latest|[1-9][0-9]{0,8})$"        # < 10^9 keeps every schema-valid number inside INT32
_NAME_BODY = NAME_REGEX[1:-1]
COMPOSITION_REF_REGEX = rf"^{_NAME_BODY}(@(latest|[1-9][0-9]{{0,8}}))?$"
NAME_HELP = "1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"

Name = Annotated[str, Path(pattern=NAME_REGEX, max_length=NAME_MAX_CHARS, description=NAME_HELP)]
VersionRef = Annotated[str, Path(pattern=VERSION_REGEX, description="a version number, or 'latest'")]
CompositionRef = Annotated[str, Path(pattern=COMPOSITION_REF_REGEX, max_length=NAME_MAX_CHARS + 10,
                                     description="name, or name@version")]
TokenId = Annotated[int, Path(ge=1, le=INT32_MAX)]
NameFilter = Annotated[Optional[str], Query(pattern=NAME_REGEX, max_length=NAME_MAX_CHARS, description=NAME_HELP)]
StatusFilter = Annotated[Literal["active", "withdrawn", "all"], Query(description="which experts to list")]
SearchText = Annotated[Optional[str], Query(max_length=64, description="substring of the expert name")]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]
Since = Annotated[int, Query(ge=0, le=INT64_MAX)]
Before = Annotated[Optional[int], Query(ge=1, le=INT32_MAX)]
ListLimit = Annotated[int, Query(ge=1, le=1000)]     # also capped by settings.list_limit_max


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable and stable, e.g. invalid_input, expert_withdrawn")
    message: str = Field(description="one human line that names the field and the fix")
    detail: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


_MEANING = {
    400: "malformed request: a parameter, header or body field (named in the message) is invalid",
    401: "missing, unknown or revoked token",
    403: "the token lacks the scope, or the resource belongs to another owner",
    404: "no such expert, version, composition, owner, token or endpoint",
    405: "method not allowed on this path (the Allow header lists the allowed ones)",
    409: "conflict with the current state (already exists, or too many concurrent writers)",
    410: "the expert or version is withdrawn by its owner",
    413: "the upload or JSON body is over the size limit",
    422: "the uploaded package is invalid (format, checksums, base model, caps)",
    503: "the database or the artifact store is unavailable; retry later",
    507: "the artifact store is full",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _MEANING.items()
}
