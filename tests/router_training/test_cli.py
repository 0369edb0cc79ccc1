"""Every `expertmesh federate` command has a working --help with an example."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.mark.parametrize("command", ["tune", "mot-train", "fedavg-lora", "eval"])
def test_federate_command_help(command):
    result = CliRunner().invoke(cli, ["federate", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example: expertmesh federate" in result.output


def test_federate_group_help_and_bad_input():
    result = CliRunner().invoke(cli, ["federate", "--help"])
    assert result.exit_code == 0 and "tune" in result.output and "mot-train" in result.output
    bad = CliRunner().invoke(cli, ["federate", "tune", "--composition", "/nonexistent", "--experts", "/tmp",
                                   "--clients", "x", "--out", "/tmp/x"])
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_federate_module_does_not_import_flower_at_import_time():
    import subprocess
    import sys

    code = "import sys, cli.main, router_training.task, router_training.mot_train; print('flwr' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
