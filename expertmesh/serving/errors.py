"""Serving errors: subclasses in the one error tree (expertmesh.errors), each with its HTTP status."""
from __future__ import annotations

from expertmesh.errors import ExpertMeshError, InvalidInputError, NotFoundError


class ContextLengthError(InvalidInputError):
    """Prompt (+ max_tokens) longer than the server's context; the code is OpenAI's."""

    code = "context_length_exceeded"


class UnsupportedParameterError(InvalidInputError):
    code = "unsupported_parameter"


class OverloadedError(ExpertMeshError):
    """The request queue is full; retry later (503 with Retry-After)."""

    code = "overloaded"
    http_status = 503


class NotReadyError(ExpertMeshError):
    """The engine is not running (starting, swapping a composition that failed, or stopped)."""

    code = "not_ready"
    http_status = 503


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class RequestTimeoutError(ExpertMeshError):
    code = "timeout"
    http_status = 504
