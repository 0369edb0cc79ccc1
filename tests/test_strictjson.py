"""expertmesh.strictjson on its own: what it refuses, what it lets through, and the path it names."""
from __future__ import annotations

import pytest

from expertmesh import strictjson
from expertmesh.errors import InvalidInputError, PackageError, PayloadTooLargeError


@pytest.mark.parametrize("text,where", [
    ('{"a": NaN}', "NaN"), ('{"a": -Infinity}', "-Infinity"), ('{"a": 1e999}', "1e999"),
    ('{"a": ["x", "y\\u0000"]}', "$.a[1]"), ('{"a\\u0000": 1}', "key"), ('{"a": {"b": "\\ud83d"}}', "$.a.b"),
    ("[" * 33 + "]" * 33, "deeper than 32"), ("[" * 100_000 + "]" * 100_000, "deeper"),
    ('{"a": 1' + "0" * 5000 + "}", "not valid JSON"), (b"\xff\xfe".decode("latin-1"), "not valid JSON"),
])
def test_refused_with_the_path(text, where):
    with pytest.raises(PackageError) as e:
        strictjson.loads(text, what="doc", error=PackageError)
    assert where in e.value.message


def test_valid_documents_pass_unchanged():
    doc = '{"a": [1, 2.5, -3e10, true, null, "caf\\u00e9 \\ud83d\\ude00"], "b": {"c": ""}}'
    assert strictjson.loads(doc.encode(), what="doc") == {"a": [1, 2.5, -3e10, True, None, "café 😀"], "b": {"c": ""}}
    assert strictjson.loads("[" * 32 + "]" * 32, what="doc") is not None


def test_size_cap_and_utf8():
    with pytest.raises(PayloadTooLargeError):
        strictjson.loads(b"[" + b"1," * 100 + b"1]", what="doc", max_bytes=100)
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        strictjson.loads(b'{"a": "\xff"}', what="doc")
