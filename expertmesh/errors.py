"""The one error tree of expertmesh.

The library raises these; each boundary maps them exactly once: the HTTP services answer ``http_status``
(a class attribute, so both services share one table: ``status_for``) with the JSON body
``{"error": {"code", "message", "detail"}}``, the typed clients turn that body back into the same class, and
the CLI prints ``error: <message>`` and exits non-zero.
"""
from __future__ import annotations

from typing import Any


class ExpertMeshError(Exception):
    """Base class. ``code`` is machine-readable and stable; ``message`` is one human line."""

    code = "expertmesh_error"
    http_status = 500

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class InvalidInputError(ExpertMeshError):
    """A value, file or request that is malformed; the message names the field and the fix."""

    code = "invalid_input"
    http_status = 400


class ConfigError(InvalidInputError):
    code = "invalid_config"


class DataError(InvalidInputError):
    """A corpus or data file that is missing, empty, malformed or not UTF-8."""

    code = "invalid_data"


class PackageError(InvalidInputError):
    """An expert or composition package that is incomplete, tampered with or of the wrong format."""

    code = "invalid_package"
    http_status = 422


class BaseMismatchError(InvalidInputError):
    """An expert trained against another base model than the one in use."""

    code = "base_mismatch"
    http_status = 422


class NotFoundError(ExpertMeshError):
    code = "not_found"
    http_status = 404


class BaseModelNotFoundError(NotFoundError):
    code = "base_model_not_found"


class UnknownExpertError(NotFoundError):
    """An expert (or version) the registry does not hold."""

    code = "unknown_expert"


class UnknownMemberError(UnknownExpertError):
    """A request names an expert that is no member of the composition in use: a bad request, not a missing URL."""

    http_status = 400


class ConflictError(ExpertMeshError):
    code = "conflict"
    http_status = 409


class IntegrityError(InvalidInputError):
    """Content whose checksum or size does not match what was declared."""

    code = "integrity_error"


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"
    http_status = 413


class AuthenticationError(ExpertMeshError):
    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(ExpertMeshError):
    code = "permission_denied"
    http_status = 403


class ExpertWithdrawnError(ExpertMeshError):
    code = "expert_withdrawn"
    http_status = 410


class MethodNotAllowedError(InvalidInputError):
    code = "method_not_allowed"
    http_status = 405


class InternalError(ExpertMeshError):
    """Something that is not an input error went wrong; the message points at the log, never at internals."""

    code = "internal_error"


class RemoteError(ExpertMeshError):
    """A remote service could not be reached or answered with something that is not our error body."""

    code = "remote_error"
    http_status = 502


def status_for(exc: ExpertMeshError) -> int:
    """The HTTP status of a library error: its class's ``http_status`` (the one table of both services)."""
    return int(getattr(exc, "http_status", ExpertMeshError.http_status))


_BY_CODE: dict[str, type[ExpertMeshError]] = {}


def _index(cls: type[ExpertMeshError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


def error_from_body(body: Any, fallback_message: str) -> ExpertMeshError:
    """Rebuild the library error a service sent (the one place clients parse error bodies)."""
    if not _BY_CODE:
        _index(ExpertMeshError)
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or "code" not in err:
        return RemoteError(fallback_message)
    cls = _BY_CODE.get(str(err["code"]), ExpertMeshError)
    exc = cls(str(err.get("message") or fallback_message), detail=err.get("detail") or {})
    exc.code = str(err["code"])
    return exc
