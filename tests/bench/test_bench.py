"""mesh-bench end to end on a tiny config-built model (seconds): every method and domain is in the JSON,
the markdown section and the PNG plots are written, and the CLI answers --help."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from benchmarks.mesh import preset, run_bench

    out = tmp_path_factory.mktemp("bench")
    md = out / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    res = run_bench(preset("tiny", out=str(out / "run")), command="expertmesh bench --tiny", log=lambda m: None,
                    markdown_path=md, publish_dir=out / "pub")
    return out, res


def test_json_has_every_method_and_domain(tiny_run):
    from benchmarks.mesh import METHODS

    out, _ = tiny_run
    res = json.loads((out / "run" / "results.json").read_text())
    assert set(res["methods"]) == set(METHODS)
    domains = res["domains"]["available"]
    assert domains == ["medicine", "law", "code", "poetry"]
    assert res["domains"]["uncovered"] == ["poetry"]
    for name, st in res["methods"].items():          # router_training is in this build: every method runs
        assert st["status"] == "ok", (name, st)
    for row in ("base", "oracle", "expert:medicine", "expert:law", "expert:code", "domain-router-k1",
                "domain-router-k2", "retriever-top1", "retriever-top2-gate", "uniform-merge", "btm-ensemble",
                "central-pooled-lora", "ties-merge", "federated-tuned-router", "fedavg-lora"):
        assert set(res["rows"][row]["losses"]) == set(domains), row
        assert all(v > 0 for v in res["rows"][row]["losses"].values())
    # oracle = the domain's own expert on covered domains
    assert res["rows"]["oracle"]["losses"]["law"] == res["rows"]["expert:law"]["losses"]["law"]
    assert 0.0 <= res["routing_accuracy"]["mean"] <= 1.0
    assert "poetry" in res["uncovered_domain"]
    assert res["opt_out"]["max_abs_logit_diff"] < 1e-4
    assert all(v == 0.0 for v in (x["gate_mass_on_excluded"] for x in res["opt_out"]["by_expert"].values()))
    assert res["generation"]["tokens_per_second"]["base"] > 0
    assert [r["experts"] for r in res["scaling"]["rows"]] == [1, 10, 100]
    hm = res["heatmap"]
    assert hm["entries"] == ["public", "medicine", "law", "code"] and set(hm["by_domain"]) == set(domains)


def test_markdown_and_plots_written(tiny_run):
    out, res = tiny_run
    md = (out / "BENCHMARKS.md").read_text()
    assert "keep me" in md and md.count("<!-- mesh-bench:start -->") == 1
    assert "expertmesh bench --tiny" in md and "| domain-router-k2 |" in md
    for f in ("perplexity_by_method.png", "routing_heatmap.png", "router_scaling.png"):
        for d in (out / "run", out / "pub"):
            p = d / f
            assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](pub/{f})" in md
    # a second render replaces the section instead of appending
    from benchmarks.mesh.harness import update_benchmarks_md

    update_benchmarks_md(out / "BENCHMARKS.md", "replaced")
    md2 = (out / "BENCHMARKS.md").read_text()
    assert md2.count("<!-- mesh-bench:start -->") == 1 and "replaced" in md2 and "keep me" in md2


def test_reuse_uses_cached_experts(tiny_run, tmp_path):
    from benchmarks.mesh import preset, run_bench

    out, _ = tiny_run
    res = run_bench(preset("tiny", out=str(out / "run"), reuse=True, scaling_sizes=[1]), log=lambda m: None)
    assert all(e["cached"] for e in res["experts"].values())


def test_cli_help():
    from cli.main import cli

    r = CliRunner().invoke(cli, ["bench", "--help"])
    assert r.exit_code == 0
    for opt in ("--quick", "--full", "--tiny", "--out", "--domains", "--reuse"):
        assert opt in r.output


def test_render_from_results(tiny_run):
    from cli.main import cli

    out, _ = tiny_run
    md = out / "again.md"
    r = CliRunner().invoke(cli, ["bench", "--from-results", str(out / "run" / "results.json"), "--markdown", str(md),
                                 "--publish-dir", str(out / "pub2")])
    assert r.exit_code == 0, r.output
    assert "| domain-router-k2 |" in md.read_text() and (out / "pub2" / "routing_heatmap.png").is_file()
