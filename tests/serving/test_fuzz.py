"""Schemathesis against the inference server's own OpenAPI, in-process over ASGI, on the tiny model.

The same phases and checks as the registry's fuzz test (tests/fuzzing.py): coverage, fuzzing and stateful; no
5xx for any request; documented status codes, content types and bodies. Generation is capped small
(max_tokens_limit 4, context 128) so each generated request costs milliseconds on the tiny model.
"""
from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from tests import fuzzing


def _run(make_app, slow: bool) -> None:  # noqa: ANN001
    app, _engine = make_app(max_context=128, max_tokens_limit=4, default_max_tokens=4, max_queue=64)
    n = fuzzing.examples(slow)
    with TestClient(app):                      # the lifespan starts the engine
        counting = fuzzing.CountingASGI(app)
        schema = schemathesis.openapi.from_asgi("/openapi.json", counting, config=fuzzing.config({}, n))
        result = fuzzing.run_engine(schema)
    counting.dump("serving/tiny", result, n)
    assert counting.server_errors == [], counting.server_errors
    assert result["failures"] == [] and result["errors"] == [], result
    assert {"coverage", "fuzzing"} <= set(result["scenarios"]) and counting.total > 100, result["scenarios"]


def test_serving_fuzz(make_app):  # noqa: ANN001
    _run(make_app, slow=False)


@pytest.mark.slow
def test_serving_fuzz_slow(make_app):  # noqa: ANN001
    _run(make_app, slow=True)
