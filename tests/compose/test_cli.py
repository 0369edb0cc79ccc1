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


def test_eval_compare_names_corpora_like_bench_own_and_refuses_two_of_one_name(tmp_path):
    from expertmesh.compose.evaluate import corpora_by_name

    (tmp_path / "a").mkdir()
    for f in ("law.txt", "a/law.jsonl"):
        (tmp_path / f).write_text("x", encoding="utf-8")
    assert corpora_by_name(["corpora/law", "b/medicine.jsonl", "c/code.txt"]) == {
        "law": "corpora/law", "medicine": "b/medicine.jsonl", "code": "c/code.txt"}
    # the check runs before any model loads: no base and no composition here
    res = CliRunner().invoke(cli, ["compose", "eval", str(tmp_path / "none"), "--compare", "--base", "no/such/base",
                                   "--data", str(tmp_path / "law.txt"), "--data", str(tmp_path / "a" / "law.jsonl")])
    assert res.exit_code == 1 and "two --data corpora are named 'law'" in res.output, res.output


def test_not_a_composition_and_mixed_bases(tmp_path, tiny_experts):
    res = CliRunner().invoke(cli, ["generate", str(tmp_path), "hi"])
    assert res.exit_code == 1 and "not a composition" in res.output
    res = CliRunner().invoke(cli, ["compose", "build", "x", "--local", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no expert packages" in res.output


def test_route_a_file_of_prompts_with_a_top_k_override(local_comp, tiny_base_dir, tmp_path):
    out, experts_dir = local_comp
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the licensee shall not sublicense the software\n\nthe patient was given aspirin\n",
                       encoding="utf-8")
    common = ["--experts", str(experts_dir), "--base", str(tiny_base_dir)]
    res = CliRunner().invoke(cli, ["route", str(out), "--file", str(prompts), "--json", "--top-k", "1", *common])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["candidates"] for r in rows] == [["law"], ["medicine"]]
    one = CliRunner().invoke(cli, ["route", str(out), "the licensee shall not", "--top-k", "1", *common])
    assert "top-k 1)" in one.output
    none = CliRunner().invoke(cli, ["route", str(out), *common])
    assert none.exit_code == 1 and "give a PROMPT or --file" in none.output


def test_federate_eval_refuses_a_retrieve_composition(local_comp, tiny_corpora):
    out, experts_dir = local_comp             # a retrieve composition (selection per request)
    res = CliRunner().invoke(cli, ["federate", "eval", "--composition", str(out), "--experts", str(experts_dir),
                                   "--data", str(tiny_corpora["law"])])
    assert res.exit_code == 1 and "compose eval" in res.output and res.output.startswith("error: ")


def test_eval_compare_table_over_own_corpora(local_comp, tiny_base_dir, tiny_corpora):
    out, experts_dir = local_comp
    common = ["--experts", str(experts_dir), "--base", str(tiny_base_dir), "--seq-len", "16", "--max-blocks", "2"]
    res = CliRunner().invoke(cli, ["compose", "eval", str(out), "--data", str(tiny_corpora["law"]), "--data",
                                   str(tiny_corpora["medicine"]), "--compare", "--json", *common])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout)
    rows = {r["domain"]: r for r in table["corpora"]}
    for d in ("law", "medicine"):
        r = rows[d]
        assert set(r["experts"]) == {"law", "medicine", "code"}
        assert r["oracle"]["loss"] == min(r["experts"].values())
        assert 0.0 <= r["routing_accuracy"] <= 1.0
    assert rows["law"]["routing_accuracy"] == 1.0           # the retriever sends law text to the law expert
    opt = table["opt_out"]                                   # 2 blocks per corpus, each member checked
    assert opt["blocks"] == 4 and set(opt["experts"]) == {"law", "medicine", "code"}
    assert all(r["exact"] and r["max_abs_diff"] <= opt["tolerance"] for r in opt["experts"].values())
    text = CliRunner().invoke(cli, ["compose", "eval", str(out), "--data", str(tiny_corpora["law"]), "--compare",
                                    "--opt-out-blocks", "1", "--top-k", "1", *common])   # top-k held in the check
    assert "routing acc" in text.output and "oracle" in text.output
    assert "opt-out exactness" in text.output and "over 1 blocks" in text.output
    assert all(f"  {m}: " in text.output and "NOT EXACT" not in text.output for m in ("law", "medicine", "code"))


def test_eval_store_keeps_the_evaluation_the_composition_page_draws(local_comp, tiny_base_dir, tiny_corpora,
                                                                     tmp_path):
    # Prepare: a copy of the local composition, so the shared fixture stays as built
    import shutil

    from expertmesh.compose.spec import verify_composition
    from registry.web.heatmap import heat_map

    out, experts_dir = local_comp
    comp = tmp_path / "comp"
    shutil.copytree(out, comp)
    common = ["--seq-len", "16", "--max-blocks", "2", "--experts", str(experts_dir), "--base", str(tiny_base_dir)]

    # Execute
    res = CliRunner().invoke(cli, ["compose", "eval", str(comp), "--data", str(tiny_corpora["law"]), "--data",
                                   str(tiny_corpora["medicine"]), "--store", *common])
    refused = CliRunner().invoke(cli, ["compose", "eval", "clinic@1", "--data", str(tiny_corpora["law"]), "--store",
                                       *common])

    # Assert: still verifies; the page's heat map has one row per corpus and the members as columns
    assert res.exit_code == 0, res.output
    spec = verify_composition(comp)
    hm = heat_map(json.loads((comp / "composition.json").read_text()))
    assert [r["data"].split("/")[-2] for r in spec.provenance["evaluation"]] == ["law", "medicine"]
    assert hm is not None and [label for label, _ in hm.rows] == ["law", "medicine"] and "law" in hm.entries
    assert refused.exit_code != 0 and "--store keeps results in a local composition directory" in refused.output
