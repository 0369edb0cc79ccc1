"""``bench --own`` on the tiny model: the user's experts (local and published) on the user's corpora, one table and
one JSON over the built compositions, with each composition's opt-out exactness."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli


def test_help_names_own_with_an_example():
    res = CliRunner().invoke(cli, ["bench", "--help"])
    assert res.exit_code == 0 and "--own" in res.output
    assert any(ln.strip().startswith("Example: expertmesh bench --own --local")
               for ln in cli.commands["bench"].help.splitlines())       # tests/test_examples.py parses it


def test_own_bench_of_local_experts(tiny_experts, tiny_corpora, tiny_base_dir, tmp_path):
    # Prepare
    out = tmp_path / "own"
    args = ["bench", "--own", "--local", str(tiny_experts["law"].parent), "--data", str(tiny_corpora["law"]),
            "--data", str(tiny_corpora["medicine"]), "--base", str(tiny_base_dir), "--seq-len", "16",
            "--eval-blocks", "2", "--opt-out-blocks", "1", "--out", str(out)]
    # Execute
    res = CliRunner().invoke(cli, args)
    # Assert: one table per router type; base, experts alone and oracle measured once, on the first
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "own-bench.json").read_text())
    first, second = doc["tables"]
    assert [t["router_type"] for t in doc["tables"]] == ["domain", "retrieve"]
    assert set(doc["experts"]) == {"law", "medicine", "code"} and doc["command"].startswith("expertmesh ")
    for r in first["corpora"]:
        assert set(r["experts"]) == {"law", "medicine", "code"} and r["base"] > 0
        assert r["oracle"]["loss"] == min(r["experts"].values())
    assert all(r["base"] is None and r["experts"] == {} for r in second["corpora"])
    assert [r["domain"] for r in second["corpora"]] == ["law", "medicine"]
    assert second["corpora"][0]["routing_accuracy"] == 1.0          # the retriever sends law text to law
    for t in doc["tables"]:
        assert t["opt_out"]["blocks"] == 2 and set(t["opt_out"]["experts"]) == {"law", "medicine", "code"}
        assert all(r["exact"] for r in t["opt_out"]["experts"].values())
    text = (out / "own-bench.txt").read_text()
    assert text.strip() in res.output
    assert "law alone" in text and "opt-out exactness of own-domain" in text and "opt-out exactness of own-retrieve" in text


def test_own_bench_top_k_applies_to_every_composition(tiny_experts, tiny_corpora, tiny_base_dir, tmp_path):
    # Prepare: the same bench twice, with the composition's own experts per token and with --top-k 1
    def bench(out, *extra):
        res = CliRunner().invoke(cli, ["bench", "--own", "--local", str(tiny_experts["law"].parent), "--data",
                                       str(tiny_corpora["law"]), "--base", str(tiny_base_dir), "--seq-len", "16",
                                       "--eval-blocks", "2", "--opt-out-blocks", "0", "--router", "domain",
                                       "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        return json.loads((out / "own-bench.json").read_text())

    # Execute
    own, one = bench(tmp_path / "own"), bench(tmp_path / "one", "--top-k", "1")
    # Assert: recorded, and the runtime scored with one expert per token routes (so scores) differently
    assert own["top_k"] is None and [t["top_k"] for t in own["tables"]] == [2]
    assert one["top_k"] == 1 and [t["top_k"] for t in one["tables"]] == [1]
    assert one["tables"][0]["corpora"][0]["composition"] != own["tables"][0]["corpora"][0]["composition"]


@pytest.mark.parametrize("args, message", [
    (["--top-k", "1"], "belong to --own"),
    (["--own", "--local", "x"], "needs at least one --data"),
    (["--own", "--data", "no/such/corpus", "--local", "."], "no/such/corpus does not exist"),
    (["--data", "."], "belong to --own"),
    (["--own", "--data", "tests/bench"], "needs experts: --local DIR"),
    (["--own", "--data", "tests/bench", "--data", "tests/compose/../bench", "--local", "."], "named 'bench'"),
])
def test_own_bench_refuses_before_the_base_loads(args, message):
    res = CliRunner().invoke(cli, ["bench", *args, "--base", "no/such/base"])
    assert res.exit_code == 1 and message in res.output


def test_own_bench_top_k_is_validated_like_compose_eval():
    res = CliRunner().invoke(cli, ["bench", "--own", "--data", "tests/bench", "--local", ".", "--top-k", "0",
                                   "--base", "no/such/base"])
    assert res.exit_code == 2 and "Invalid value for '--top-k': 0 is not in the range x>=1" in res.output


def test_own_bench_of_published_experts(acme_registry, tiny_experts, tiny_corpora, tiny_base_dir, tmp_path,
                                        monkeypatch):
    from clients.registry_client import RegistryClient

    # Prepare: law and medicine published; code stays local
    url, token = acme_registry                           # logged in as acme
    with RegistryClient(url, token) as reg:
        for name in ("law", "medicine"):
            reg.publish(tiny_experts[name])
    monkeypatch.setenv("EXPERTMESH_CACHE", str(tmp_path / "cache"))
    stored = CliRunner().invoke(cli, ["compose", "build", "pair", "--router", "retrieve", "--top-m", "1"])
    out = tmp_path / "own"
    # Execute
    res = CliRunner().invoke(cli, ["bench", "--own", "--expert", "law", "--expert", "medicine@1", "--local",
                                   str(tiny_experts["code"]), "--router", "domain", "--composition", "pair",
                                   "--data", str(tiny_corpora["law"]), "--base", str(tiny_base_dir), "--seq-len",
                                   "16", "--eval-blocks", "2", "--out", str(out)])
    # Assert: the published experts were pulled under OUT and scored beside the local one; the registry
    # composition of two of them is scored beside the built one without measuring them again
    assert stored.exit_code == 0 and "stored pair@1" in stored.output, stored.output
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "own-bench.json").read_text())
    assert doc["experts"]["law"] == str(out / "experts" / "law") and (out / "experts" / "medicine").is_dir()
    built, pair = doc["tables"]
    assert set(built["corpora"][0]["experts"]) == {"law", "medicine", "code"}
    assert pair["composition"] == "pair@1" and pair["router_type"] == "retrieve"
    assert pair["corpora"][0]["base"] is None and set(pair["opt_out"]["experts"]) == {"law", "medicine"}
    assert all(r["exact"] for t in doc["tables"] for r in t["opt_out"]["experts"].values())
