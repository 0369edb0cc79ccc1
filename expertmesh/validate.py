"""Field validators used by the typed configs: each error names the field, shows the value, says the fix."""
from __future__ import annotations

import re
from typing import Any, Iterable

from expertmesh.errors import ConfigError

# Used with fullmatch: with match, "$" also matches before a trailing newline, so "mal\n" passed as a name.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# The same rule (".." included) as a JSON-schema pattern for OpenAPI, without look-ahead, which pydantic's regex
# engine lacks: after the first character, every "." is followed by a non-dot character or ends the name.
NAME_REGEX = r"^[a-z0-9](?:\.?[a-z0-9_-])*\.?$"
NAME_MAX_CHARS = 64


def check_name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
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
