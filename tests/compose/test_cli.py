import json

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.mark.parametrize("args", [["compose"], ["compose", "build"], ["compose", "inspect"], ["compose", "eval"],
                                  ["generate"], ["route"]])
def test_help(args):
    res = CliRunner().invoke(cli, args + ["--help"])
    assert res.exit_code == 0 and "Example:" in res.output


@pytest.fixture(scope="module")
def local_comp(tmp_path_factory, tiny_experts, tiny_base_dir):
    out = tmp_path_factory.mktemp("cli") / "demo"
    experts_dir = tiny_experts["law"].parent
    res = CliRunner().invoke(cli, ["compose", "build", "demo", "--local", str(experts_dir), "--router", "retrieve",
                                   "--top-m", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, experts_dir


def test_build_inspect_route_generate_locally(local_comp, tiny_base_dir):
    out, experts_dir = local_comp
    run = CliRunner().invoke
    spec = json.loads(run(cli, ["compose", "inspect", str(out)]).stdout)
    assert spec["router_type"] == "retrieve" and spec["top_m"] == 1
    common = ["--experts", str(experts_dir), "--base", str(tiny_base_dir)]
    res = run(cli, ["route", str(out), "the licensee shall not sublicense the software", *common])
    assert res.exit_code == 0, res.output
    assert "candidates: law" in res.output and "layer" in res.output
    res = run(cli, ["generate", str(out), "the patient was given", "--max-new-tokens", "3", "--json", *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["trace"]["candidates"] == ["medicine"]
    res = run(cli, ["route", str(out), "anything", "--exclude", "law", "--exclude", "medicine", "--exclude", "code",
                    *common])
    assert "none (public base)" in res.output and "answered by the public base" in res.output


def test_eval_reports_base_and_composition(local_comp, tiny_base_dir, tiny_corpora):
    out, experts_dir = local_comp
    res = CliRunner().invoke(cli, ["compose", "eval", str(out), "--data", str(tiny_corpora["law"]), "--seq-len", "16",
                                   "--max-blocks", "2", "--json", "--experts", str(experts_dir),
                                   "--base", str(tiny_base_dir)])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["composition_loss"] < r["base_loss"] and r["gate_mass"]["law"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--exclude", "nope"], "unknown expert"),
    ([], "needs --experts"),
])
def test_error_paths_print_one_line(local_comp, tiny_base_dir, extra, message):
    out, experts_dir = local_comp
    common = ["--base", str(tiny_base_dir)] + (["--experts", str(experts_dir)] if "--exclude" in extra else [])
    res = CliRunner().invoke(cli, ["route", str(out), "hello", *common, *extra])
    assert res.exit_code == 1 and "error:" in res.stderr and message in res.output


def test_not_a_composition_and_mixed_bases(tmp_path, tiny_experts):
    res = CliRunner().invoke(cli, ["generate", str(tmp_path), "hi"])
    assert res.exit_code == 1 and "not a composition" in res.output
    res = CliRunner().invoke(cli, ["compose", "build", "x", "--local", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no expert packages" in res.output
