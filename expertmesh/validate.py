"""Field validators used by the typed configs: each error names the field, shows the value, says the fix."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

from expertmesh.errors import ConfigError, ExpertMeshError, InvalidInputError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value) or ".." in value:
        raise ConfigError(
            f"{field}={value!r} is not a valid name: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_int(field: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}={value!r} must be an integer")
    if lo is not None and value < lo:
        raise ConfigError(f"{field}={value} must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{field}={value} must be <= {hi}")
    return value


def check_float(field: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{field}={value!r} must be a number")
    value = float(value)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{field}={value} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{field}={value} must be <= {hi}")
    return value


def check_choice(field: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def check_str_list(field: str, value: Any, *, nonempty: bool = False) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{field}={value!r} must be a list of non-empty strings")
    if nonempty and not value:
        raise ConfigError(f"{field} must not be empty")
    return list(value)


def check_known_fields(cls, d: dict[str, Any], *, what: str | None = None,
                       error: type[ExpertMeshError] = ConfigError) -> None:
    """Refuse keys of ``d`` that the dataclass ``cls`` does not declare: a misspelt option must not be silently
    ignored. ``what`` names the thing in the message, ``error`` is the class raised."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"{what or cls.__name__} has unknown fields {unknown}; known: {sorted(known)}")


def from_known_fields(cls, d: dict[str, Any] | None, **kw):
    """``cls(**d)`` for a config dataclass after ``check_known_fields``."""
    d = dict(d or {})
    check_known_fields(cls, d, **kw)
    return cls(**d)


def parse_version(ref: str | int | None) -> int | None:
    """``None``/""/"latest" -> None (the latest active version), else a version number >= 1."""
    if ref is None or ref == "" or ref == "latest":
        return None
    try:
        v = int(ref)
    except (TypeError, ValueError):
        raise InvalidInputError(f"version {ref!r} must be a number >= 1 or 'latest'", detail={"field": "version"}) \
            from None
    if v < 1:
        raise InvalidInputError(f"version {v} must be >= 1", detail={"field": "version"})
    return v


def split_ref(ref: str) -> tuple[str, int | None]:
    """The one reading of an expert or composition reference: "name" -> (name, None), "name@3" -> (name, 3)."""
    name, _, version = ref.partition("@")
    return name, parse_version(version)
