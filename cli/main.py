"""``expertmesh``: the command line of the platform.

Every module in ``cli/`` that defines ``register(group)`` adds its commands here, so a command
group lives in one file. Library errors surface as one ``error: ...`` line and exit status 1; heavy imports
(torch, transformers) happen inside the commands so ``--help`` stays fast.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import click

from expertmesh.errors import ExpertMeshError

# No hub access on these machines and no telemetry from a data owner's machine.
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)


class MeshGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ExpertMeshError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no partial output was kept", err=True)
            sys.exit(130)


@click.group(cls=MeshGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="expertmesh")
def cli() -> None:
    """Federated modular experts: train and publish LoRA experts, compose them, serve them.

    Example: expertmesh demo --quick
    """


def _register_all() -> None:
    pkg = importlib.import_module("cli")
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name in {"main"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"cli.{info.name}")
        if hasattr(module, "register"):
            module.register(cli)


_register_all()

if __name__ == "__main__":
    cli()
