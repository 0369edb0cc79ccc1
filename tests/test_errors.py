"""One error tree, one status table: every class carries its HTTP status and both services answer with it."""
from __future__ import annotations

import json

import pytest

from expertmesh import errors
from expertmesh.errors import ExpertMeshError, status_for


def _tree(cls=ExpertMeshError):
    yield cls
    for sub in cls.__subclasses__():
        yield from _tree(sub)


def _all_errors():
    import expertmesh.serving.errors  # noqa: F401  (its classes join the tree)

    return sorted(set(_tree()), key=lambda c: c.__qualname__)


def test_the_table_is_the_classes():
    want = {errors.InvalidInputError: 400, errors.ConfigError: 400, errors.IntegrityError: 400,
            errors.PackageError: 422, errors.BaseMismatchError: 422, errors.PayloadTooLargeError: 413,
            errors.AuthenticationError: 401, errors.PermissionDeniedError: 403, errors.NotFoundError: 404,
            errors.UnknownExpertError: 404, errors.UnknownMemberError: 400, errors.ConflictError: 409,
            errors.ExpertWithdrawnError: 410, errors.MethodNotAllowedError: 405, errors.RemoteError: 502,
            errors.InternalError: 500, ExpertMeshError: 500}
    assert {cls: status_for(cls("x")) for cls in want} == want
    from expertmesh.serving.errors import NotReadyError, OverloadedError, RequestTimeoutError

    assert [status_for(c("x")) for c in (OverloadedError, NotReadyError, RequestTimeoutError)] == [503, 503, 504]


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
def test_both_services_answer_every_class_alike(cls):
    from registry.app import error_response as registry_response
    from serving.app import error_response as serving_response

    exc = cls("something went wrong")
    a, b = registry_response(exc), serving_response(exc)
    assert a.status_code == b.status_code == cls.http_status
    assert json.loads(a.body) == json.loads(b.body) == exc.to_body()


def test_unexpected_exceptions_are_internal_errors():
    from serving.app import error_response

    r = error_response(RuntimeError("boom"))
    assert r.status_code == 500
    assert json.loads(r.body)["error"]["code"] == "internal_error" and "boom" not in r.body.decode()


def test_a_member_error_comes_back_to_a_client_as_unknown_expert():
    body = errors.UnknownMemberError("experts.include names unknown expert(s) ['ghost']").to_body()
    back = errors.error_from_body(body, "fallback")
    assert isinstance(back, errors.UnknownExpertError) and back.code == "unknown_expert"
