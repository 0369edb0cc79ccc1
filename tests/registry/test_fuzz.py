"""Schemathesis against the registry's own OpenAPI, in-process over ASGI, on SQLite and PostgreSQL.

Coverage phase (boundary and invalid values of every parameter the schema states), fuzzing phase (random
schema-driven requests) and stateful phase (sequences that follow the links between operations), as the admin
so every operation is reachable, over a registry seeded with an owner, an expert and a composition.
No answer may be a 5xx; status codes, content types and bodies must be those the schema documents.
The default run is a few examples per operation (tests/fuzzing.py); ``-m slow`` runs the larger one.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from tests import fuzzing
from tests.registry.conftest import ADMIN_TOKEN, Api, make_composition_dir, make_expert_package

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextlib.contextmanager
def _seeded(settings, tmp_path) -> Iterator[tuple[fuzzing.CountingASGI, TestClient]]:  # noqa: ANN001
    from registry.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:          # runs the lifespan (migrations) once, for every request below
        api = Api(client, app)
        alice = api.owner("alice", ("publish", "coordinate"))
        assert api.publish(make_expert_package(tmp_path / "law", "law-expert"), alice).status_code == 201
        comp = make_composition_dir(tmp_path / "mesh", "mesh", [("law-expert", 1)])
        assert api.store_composition(comp, alice).status_code == 201
        yield fuzzing.CountingASGI(app), client


def _run(settings, tmp_path, db_url, slow: bool) -> None:  # noqa: ANN001
    n = fuzzing.examples(slow)
    with _seeded(settings, tmp_path) as (counting, _client):
        schema = schemathesis.openapi.from_asgi("/openapi.json", counting, config=fuzzing.config(ADMIN, n))
        result = fuzzing.run_engine(schema)
    db = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    counting.dump(f"registry/{db}", result, n)
    assert counting.server_errors == [], counting.server_errors
    assert result["failures"] == [] and result["errors"] == [], result
    # every phase ran, and every operation was reached in the stateless phases
    assert {"coverage", "fuzzing", "stateful"} <= set(result["scenarios"]), result["scenarios"]
    assert result["scenarios"]["coverage"] >= 20 and counting.total > 300


def test_registry_fuzz(settings, tmp_path, db_url):
    _run(settings, tmp_path, db_url, slow=False)


@pytest.mark.slow
def test_registry_fuzz_slow(settings, tmp_path, db_url):
    _run(settings, tmp_path, db_url, slow=True)
