"""The real round trip of a plain-PEFT adapter: train with plain PEFT, `expertmesh expert import`, publish to a
live registry, `compose build` from it, serve it, and see routing pick it for its own domain's text.
Slow (two PEFT trainings, a registry and a server: ~3 min on a busy 2-core machine): ``pytest -m slow``."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from tests.expert.test_import_peft import train_plain_peft
from tests.serving.test_withdrawal import ADMIN

pytestmark = pytest.mark.slow
MED_PROMPT = "the patient was given aspirin for chest pain and fever."


@pytest.fixture
def registry(tmp_path, tiny_base_dir):
    from clients.registry_client import RegistryClient
    from expertmesh.base import load_base
    from registry.app import create_app
    from registry.settings import RegistrySettings
    from tests.serving.conftest import LiveServer

    app = create_app(RegistrySettings(data_dir=tmp_path / "registry", admin_token=ADMIN,
                                      base_fingerprint=load_base(str(tiny_base_dir)).fingerprint))
    with LiveServer(app) as server, RegistryClient(server.url, ADMIN) as admin:
        admin.create_owner("clinic")
        yield server.url, admin.create_token("clinic", ["publish", "coordinate", "read"]).token


def test_plain_peft_adapter_round_trip(registry, tiny_base_dir, tiny_corpora, tmp_path, monkeypatch):
    from clients.registry_client import RegistryClient
    from expertmesh.serving.settings import ServeSettings
    from expertmesh.testing import TINY_TEXTS
    from serving.app import create_app
    from serving.launch import build_server

    url, token = registry
    monkeypatch.setenv("EXPERTMESH_REGISTRY_URL", url)
    monkeypatch.setenv("EXPERTMESH_TOKEN", token)
    monkeypatch.setenv("EXPERTMESH_CACHE", str(tmp_path / "cache"))
    # Prepare: two users' adapters trained with plain PEFT only, on medicine and on law text
    adapters = {d: train_plain_peft(tiny_base_dir, TINY_TEXTS[d], tmp_path / f"peft-{d}", steps=20)
                for d in ("medicine", "law")}
    runner = CliRunner()
    # Execute: import both, publish, compose from the registry, serve
    for d, adapter in adapters.items():
        imported = runner.invoke(cli, ["expert", "import", str(adapter), "--data", str(tiny_corpora[d]),
                                       "--name", d, "--owner", "clinic", "--out", str(tmp_path / d),
                                       "--base", str(tiny_base_dir), "--seq-len", "32", "--pilots", "2"])
        assert imported.exit_code == 0, imported.output
        assert "held-out loss" in imported.output
        with RegistryClient(url, token) as reg:
            reg.publish(tmp_path / d)
    built = runner.invoke(cli, ["compose", "build", "clinic", "--router", "retrieve", "--top-m", "1"])
    assert built.exit_code == 0, built.output
    settings = ServeSettings(composition="clinic", registry_url=url, registry_token=token, base=str(tiny_base_dir),
                             max_context=256)
    engine, watcher = build_server(settings, cache_dir=tmp_path / "serve-cache", client=RegistryClient(url, token))
    with TestClient(create_app(settings, engine, watcher=watcher)) as c:
        r = c.post("/v1/completions", json={"model": "clinic", "prompt": MED_PROMPT, "max_tokens": 2,
                                            "temperature": 0, "return_routing": True})
        law = c.post("/v1/completions", json={"model": "clinic", "prompt": TINY_TEXTS["law"][0], "max_tokens": 2,
                                              "temperature": 0, "return_routing": True})
    # Assert: served, and the retriever picks the imported expert for its own domain's text, and only then
    assert r.status_code == 200 and law.status_code == 200, r.text + law.text
    med_routing, law_routing = r.json()["routing"], law.json()["routing"]
    assert med_routing["candidates"] == ["medicine"] and med_routing["weights"]["medicine"] > 0
    assert med_routing["weights"].get("law", 0.0) == 0.0
    assert law_routing["candidates"] == ["law"] and law_routing["weights"].get("medicine", 0.0) == 0.0
