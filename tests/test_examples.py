"""Every `expertmesh ...` example in README.md and in every command's help parses as written.

Each example is run through click's own parser in a dry mode (``make_context``: options, arguments, types and
required fields are checked; nothing executes). Only "path does not exist" is tolerated: examples name files
the reader has yet to make.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cli.main import cli

ROOT = Path(__file__).resolve().parent.parent


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            out += [part for part in line.split("&&") if "expertmesh " in part.split("#")[0]]
    return out


def help_examples() -> list[str]:
    out = []

    def walk(cmd: click.Command) -> None:
        for line in (cmd.help or "").splitlines():
            if line.strip().startswith("Example:"):
                out.append(line.strip()[len("Example:"):])
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)
    walk(cli)
    return out


def dry_parse(example: str) -> None:
    words = shlex.split(example, comments=True)
    words = words[words.index("expertmesh") + 1:]
    cmd, ctx = cli, None
    if words and words[0].startswith("-") and words[0] not in ("--help", "-h", "--version"):
        # group options first (`expertmesh --profile clinic publish ...`): parse them, then go on with the rest
        ctx = cli.make_context("expertmesh", list(words))
        words = [*(ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args), *ctx.args]
    while isinstance(cmd, click.Group) and words and not words[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), words[0])
        assert sub is not None, f"no command {words[0]!r} in: {example}"
        ctx = click.Context(cmd, info_name=words[0], parent=ctx)
        cmd, words = sub, words[1:]
    try:
        cmd.make_context(cmd.name, list(words), parent=ctx)
    except click.exceptions.Exit:
        pass                                      # --help / --version
    except click.BadParameter as e:
        if "does not exist" not in str(e):
            raise


EXAMPLES = sorted(set(readme_examples())) + sorted(set(help_examples()))


def test_there_are_examples_to_check():
    assert len(readme_examples()) >= 10 and len(help_examples()) >= 30


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_parses_as_written(example):
    dry_parse(example)


def test_one_registry_port_everywhere():
    from cli.registry import registry_group

    serve = registry_group.commands["serve"]
    port = next(p for p in serve.params if p.name == "port")
    texts = [(ROOT / p).read_text(encoding="utf-8") for p in ("README.md", "docker-compose.yml", "registry/README.md")]
    texts += help_examples()
    urls = set(re.findall(r"https?://(?:127\.0\.0\.1|localhost|registry):(\d+)", "\n".join(texts)))
    serve_port = "8000"                            # the inference server's own default
    assert urls - {serve_port} == {str(port.default)}, urls
