from click.testing import CliRunner

from cli.main import cli


def test_demo_tiny_runs_end_to_end(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--tiny", "--work", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "opt-out" in result.output and "medicine 0.00" in result.output
    assert (tmp_path / "demo" / "coordinator" / "composition" / "composition.json").is_file()


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name, cmd in cli.commands.items():
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, name
        for sub in getattr(cmd, "commands", {}):
            res = runner.invoke(cli, [name, sub, "--help"])
            assert res.exit_code == 0 and "Usage" in res.output, f"{name} {sub}"
