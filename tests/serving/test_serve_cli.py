"""``expertmesh serve``: help, one-line errors, and local-directory mode assembled by build_server."""
from __future__ import annotations

import shutil

from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli


def test_serve_help():
    r = CliRunner().invoke(cli, ["serve", "--help"])
    assert r.exit_code == 0
    assert "Example: expertmesh serve --composition" in r.output and "--max-batch" in r.output


def test_serve_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTMESH_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("EXPERTMESH_REGISTRY_URL", raising=False)
    r = CliRunner().invoke(cli, ["serve", "--composition", "clinic"])
    assert r.exit_code == 1 and r.output.strip().startswith("error: no registry configured")
    r = CliRunner().invoke(cli, ["serve", "--composition", str(tmp_path / "missing" / "dir")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = CliRunner().invoke(cli, ["serve", "--composition", "clinic", "--poll-interval", "5"])
    assert r.exit_code == 1 and "poll_interval_s" in r.output


def test_local_directory_mode(tmp_path, serving_experts, tiny_base_dir):
    from expertmesh.compose import build_composition
    from serving.app import create_app
    from serving.launch import build_server
    from expertmesh.serving.settings import ServeSettings

    for name, d in serving_experts.items():
        shutil.copytree(d, tmp_path / "experts" / name)
    build_composition("local-mesh", tmp_path / "experts", "domain", out=tmp_path / "composition", top_k=1)
    settings = ServeSettings(composition=str(tmp_path / "composition"), base=str(tiny_base_dir), max_context=512)
    engine, watcher = build_server(settings)
    assert watcher is None and engine.comp.top_k == 1
    with TestClient(create_app(settings, engine)) as c:
        r = c.post("/v1/completions", json={"model": "local-mesh", "prompt": "def f(x):", "max_tokens": 3,
                                            "return_routing": True})
        assert r.status_code == 200, r.text
        weights = r.json()["routing"]["weights"]
        assert set(weights) == {"public", "medicine", "law", "code"}
