"""``expertmesh data``: every command has --help; library errors become one ``error:`` line and exit 1."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.mark.parametrize("args", [["data"], ["data", "build"], ["data", "import"], ["data", "ls"]])
def test_help(args):
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0 and "Example: expertmesh data" in result.output


def test_unknown_domain_is_one_error_line(tmp_path):
    result = CliRunner().invoke(cli, ["data", "build", "--domain", "astrology", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: domain='astrology' is not a known corpus source")


def test_build_then_ls_then_refuse_overwrite(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "corpora")

    built = runner.invoke(cli, ["data", "build", "--domain", "law", "--out", out, "--max-docs", "4"])
    listed = runner.invoke(cli, ["data", "ls", out])
    again = runner.invoke(cli, ["data", "build", "--domain", "law", "--out", out, "--max-docs", "4"])

    assert built.exit_code == 0 and "law: train" in built.output
    assert listed.exit_code == 0 and listed.output.splitlines()[1].split()[:2] == ["law", "law"]
    assert again.exit_code == 1 and "pass --overwrite" in again.output


def test_import_user_text(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(5):
        (tmp_path / "docs" / f"{i}.md").write_text(f"# note {i}\nbody", encoding="utf-8")

    result = CliRunner().invoke(cli, ["data", "import", str(tmp_path / "docs"), "--domain", "acme",
                                      "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "acme" / "train.jsonl").is_file()


def test_ls_of_a_missing_directory(tmp_path):
    result = CliRunner().invoke(cli, ["data", "ls", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "error:" in result.output


def test_build_fine_grained_parts_by_name(tmp_path):
    out = str(tmp_path / "fine")

    result = CliRunner().invoke(cli, ["data", "build", "--domain", "medicine:ch09", "--domain", "code:json",
                                      "--out", out, "--max-docs", "4"])

    assert result.exit_code == 0, result.output
    assert "medicine.ch09: train" in result.output and "code.json: train" in result.output


def test_unknown_fine_part_is_one_error_line(tmp_path):
    result = CliRunner().invoke(cli, ["data", "build", "--domain", "medicine:ch99", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: domain='medicine:ch99': medicine has no part 'ch99'")


def test_build_needs_a_domain_or_fine(tmp_path):
    result = CliRunner().invoke(cli, ["data", "build", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--fine" in result.output
