"""``expertmesh expert``: what a data owner runs on its own machine (train, eval, inspect)."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def expert() -> None:
    """Train and evaluate an expert on your own data; nothing but the expert package leaves the machine.

    Example: expertmesh expert train --data data/corpora/law --name law --owner acme --out experts/law
    """


@expert.command("train")
@click.option("--data", required=True, type=click.Path(), help="Corpus dir (train.jsonl + heldout.jsonl), .jsonl or .txt.")
@click.option("--heldout", type=click.Path(), default=None, help="Held-out .jsonl/.txt (default: <data>/heldout.jsonl).")
@click.option("--name", required=True, help="Expert name (lowercase, e.g. 'law').")
@click.option("--owner", required=True, help="Your owner name in the registry.")
@click.option("--out", required=True, type=click.Path(), help="Output package directory (written atomically).")
@click.option("--base", default=None, help="Base model dir or 'smollm2-135m-instruct' (default).")
@click.option("--tag", "tags", multiple=True, help="Domain tag (repeatable; default: the expert name).")
@click.option("--licence", default="unspecified", show_default=True, help="Licence of the expert (SPDX id).")
@click.option("--rank", default=16, show_default=True, type=int, help="LoRA rank.")
@click.option("--alpha", default=None, type=float, help="LoRA alpha (default 2 x rank).")
@click.option("--target", "targets", multiple=True, help="LoRA target module (repeatable; default q,k,v,o_proj).")
@click.option("--steps", default=50, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--seq-len", default=256, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--router-lr", default=1e-3, show_default=True, type=float, help="0 freezes the router row at its init.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "bf16", "fp32"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--pilots", "num_pilots", default=8, show_default=True, type=int, help="RouterRetriever pilot embeddings.")
@click.option("--checkpoint-every", default=25, show_default=True, type=int)
@click.option("--no-resume", is_flag=True, help="Ignore an earlier interrupted run's checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data, heldout, name, owner, out, base, tags, licence, rank, alpha, targets, steps, batch_size, seq_len,
          lr, router_lr, precision, seed, num_pilots, checkpoint_every, no_resume, overwrite, quiet) -> None:
    """Train a LoRA expert + router signature against the frozen public base.

    Example: expertmesh expert train --data data/corpora/medicine --name medicine --owner clinic --out experts/medicine --steps 40
    """
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    lora = LoraSpec(r=rank, alpha=alpha if alpha is not None else 2.0 * rank,
                    **({"target_modules": list(targets)} if targets else {}))
    cfg = TrainConfig(name=name, owner=owner, data=data, heldout=heldout, out=out, base=base, domain_tags=list(tags),
                      licence=licence, lora=lora, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                      router_lr=router_lr, precision=precision, seed=seed, num_pilots=num_pilots,
                      checkpoint_every=checkpoint_every, resume=not no_resume, overwrite=overwrite)
    result = train_expert(cfg, progress=not quiet)
    m = result.manifest.metrics
    click.echo(f"wrote {result.out}")
    if m:
        click.echo(f"held-out loss: base {m['base_loss']:.4f} -> expert {m['expert_loss']:.4f} "
                   f"(ppl {m['base_ppl']:.2f} -> {m['expert_ppl']:.2f})")


@expert.command("eval")
@click.option("--expert", "expert_dir", required=True, type=click.Path(), help="Expert package directory.")
@click.option("--data", required=True, type=click.Path(), help="Corpus dir (uses heldout.jsonl), .jsonl or .txt.")
@click.option("--base", default=None, help="Base model dir (default: the embedded default).")
@click.option("--seq-len", default=256, show_default=True, type=int)
@click.option("--max-blocks", default=32, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_cmd(expert_dir, data, base, seq_len, max_blocks, as_json) -> None:
    """Held-out loss and perplexity of the base vs the expert on any corpus.

    Example: expertmesh expert eval --expert experts/law --data data/corpora/medicine
    """
    from expertmesh.expert.evaluate import evaluate_expert

    res = evaluate_expert(expert_dir, data, base=base, seq_len=seq_len, max_blocks=max_blocks)
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo(f"{res['data']}: {res['blocks']} blocks x {seq_len} tokens")
        click.echo(f"  base   loss {res['base_loss']:.4f}  ppl {res['base_ppl']:.2f}")
        click.echo(f"  expert loss {res['expert_loss']:.4f}  ppl {res['expert_ppl']:.2f}")


@expert.command("inspect")
@click.argument("package", type=click.Path())
def inspect_cmd(package) -> None:
    """Verify a package (files, checksums, shapes) and print its manifest.

    Example: expertmesh expert inspect experts/law
    """
    from expertmesh.expert.package import verify_package

    manifest = verify_package(Path(package))
    click.echo(json.dumps(manifest.to_dict(), indent=2))


def register(group: click.Group) -> None:
    group.add_command(expert)
