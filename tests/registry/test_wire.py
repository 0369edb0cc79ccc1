"""The registry's response models are derived from expertmesh.wire, the dataclasses the client parses into.

What must hold for the two sides to stay one definition: every wire class has a model of the same name, fields,
order, defaults and descriptions; the OpenAPI components are those models; and a model's JSON, parsed by the
client's ``wire.from_json``, gives back the same values.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Optional

import pytest

from expertmesh import wire
from registry import schemas


@pytest.mark.parametrize("cls", wire.RESPONSES, ids=lambda c: c.__name__)
def test_each_response_model_has_the_wire_fields(cls):
    model = getattr(schemas, cls.__name__)
    fields = dataclasses.fields(cls)

    assert model is schemas.response_model(cls) and model.__name__ == cls.__name__
    assert list(model.model_fields) == [f.name for f in fields]
    for f in fields:
        info = model.model_fields[f.name]
        assert info.is_required() == (f.default is dataclasses.MISSING), f.name
        if not info.is_required():
            assert info.default == f.default, f.name
        assert info.description == f.metadata.get("description"), f.name


def test_the_openapi_components_are_the_wire_classes(api):
    components = api.client.get("/openapi.json").json()["components"]["schemas"]

    for cls in wire.RESPONSES:
        if cls.__name__ not in components:   # only models that some route answers with are documented
            continue
        props = components[cls.__name__]["properties"]
        assert list(props) == [f.name for f in dataclasses.fields(cls)], cls.__name__
    version = components["ExpertVersionPublic"]["properties"]
    assert version["files"]["additionalProperties"] == {"$ref": "#/components/schemas/FileInfo"}
    assert version["created_at"] == {"type": "string", "format": "date-time", "title": "Created At"}
    assert version["identity"]["description"] == "sha256 of the canonical manifest without its version field"
    assert {"ExpertVersionPublic", "ExpertList", "CompositionVersionPublic", "TokenIssued", "Health"} <= set(components)


def test_a_model_answer_parses_back_into_the_same_values():
    at = dt.datetime(2026, 12, 4, 19, 45, 18, 123456, tzinfo=dt.timezone.utc)
    files = {"manifest.json": schemas.FileInfo(sha256="ab" * 32, size=10)}
    version = schemas.ExpertVersionPublic(
        name="law", owner="alice", version=2, status="active", version_status="active", status_reason="",
        identity="cd" * 32, base_fingerprint="fp", manifest_sha256="ab" * 32, size_bytes=10, archive_bytes=2048,
        files=files, manifest={"name": "law", "nested": {"x": [1, 2]}}, created_at=at)
    expert = schemas.ExpertPublic(name="law", owner="alice", status="active", status_reason="", latest_version=2,
                                  latest_active_version=None, domain_tags=["law"], created_at=at, updated_at=at,
                                  versions=[version])

    parsed = wire.from_json(wire.ExpertPublic, expert.model_dump(mode="json"))   # what the client does

    assert dataclasses.asdict(parsed) == expert.model_dump()
    assert isinstance(parsed.versions[0].files["manifest.json"], wire.FileInfo)
    assert parsed.versions[0].created_at == at and parsed.versions[0].created_at.tzinfo is not None


def test_the_client_ignores_fields_it_does_not_know():
    body = {"status": "ok", "database": "sqlite", "revision": 3, "base_fingerprint": None, "added_later": [1]}

    assert wire.from_json(wire.Health, body) == wire.Health(status="ok", database="sqlite", revision=3,
                                                             base_fingerprint=None)


def test_a_token_answer_keeps_its_secret_out_of_repr():
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    issued = schemas.TokenIssued(id=1, owner="alice", label="", scopes=["read"], prefix="emr_abcd", created_at=at,
                                 token="emr_secret")

    parsed = wire.from_json(wire.TokenIssued, issued.model_dump(mode="json"))

    assert parsed.token == "emr_secret" and "emr_secret" not in repr(parsed)
    assert isinstance(parsed, wire.TokenPublic)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _BothOptionals:                        # module level: get_type_hints resolves the annotations here
    old: Optional[int] = None
    new: int | None = None
    files: dict[str, Optional[wire.FileInfo]]


def test_both_spellings_of_optional_derive_a_model():
    model = schemas.response_model(_BothOptionals)

    assert model(files={}).model_dump() == {"old": None, "new": None, "files": {}}
    assert model(old=1, new=2, files={"a": None}).new == 2
    assert wire.from_json(_BothOptionals, {"new": 3, "files": {"a": {"sha256": "x", "size": 1}}}).files["a"].size == 1


@pytest.mark.parametrize("body", [
    {"status": "ok", "database": "sqlite"},                                   # required fields missing
    ["not", "an", "object"],
], ids=["missing-fields", "a-list"])
def test_an_answer_that_is_not_the_promised_shape_is_a_remote_error(body):
    from expertmesh.errors import RemoteError

    with pytest.raises(RemoteError, match="not a valid Health"):
        wire.from_json(wire.Health, body)


def test_a_bad_timestamp_is_a_remote_error():
    from expertmesh.errors import RemoteError

    with pytest.raises(RemoteError, match="not a valid OwnerPublic"):
        wire.from_json(wire.OwnerPublic, {"name": "a", "display_name": "A", "created_at": "yesterday"})
