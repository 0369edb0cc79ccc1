"""``expertmesh expert``: what a data owner runs on its own machine (train, eval, inspect)."""
from __future__ import annotations

import contextlib
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
@click.option("--canaries", default=0, show_default=True, type=int, help="Random secrets to plant for `expert audit`.")
@click.option("--canary-repeats", default=8, show_default=True, type=int, help="Insertions of each canary.")
@click.option("--dp-epsilon", default=None, type=float, help="Train with DP-SGD to this epsilon (default: no DP).")
@click.option("--dp-delta", default=1e-5, show_default=True, type=float, help="DP delta (must be < 1/blocks).")
@click.option("--dp-clip", default=1.0, show_default=True, type=float,
              help="DP per-sample clipping norm. Pick it below most per-sample gradient norms (for a fresh LoRA r=2 "
                   "on SmolLM2 they are ~0.2-0.9; BENCHMARKS.md used 0.1), or the noise outweighs what is clipped.")
@click.option("--freeze-lora-a", is_flag=True,
              help="FFA-LoRA: keep each A at its random init and train only B (fewer values for DP to noise).")
@click.option("--no-resume", is_flag=True, help="Ignore an earlier interrupted run's checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads (default: torch's). On a shared, busy CPU, 1 is often fastest.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="With --quiet and no terminal: where the progress line goes (default: OUT.train.log).")
@click.option("--quiet", is_flag=True,
              help="No progress bar or library warnings; one progress line on a terminal, else in --log-file.")
def train(data, heldout, name, owner, out, base, tags, licence, rank, alpha, targets, steps, batch_size, seq_len,
          lr, router_lr, precision, seed, num_pilots, checkpoint_every, canaries, canary_repeats, dp_epsilon, dp_delta,
          dp_clip, freeze_lora_a, no_resume, overwrite, threads, log_file, quiet) -> None:
    """Train a LoRA expert + router signature against the frozen public base.

    Example: expertmesh expert train --data data/corpora/medicine --name medicine --owner clinic --out experts/medicine --steps 40

    Private variant: add --canaries 4 (secrets for `expert audit`) and --dp-epsilon 8 --dp-delta 1e-5 (DP-SGD).
    """
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    lora = LoraSpec(r=rank, alpha=alpha if alpha is not None else 2.0 * rank,
                    **({"target_modules": list(targets)} if targets else {}))
    cfg = TrainConfig(name=name, owner=owner, data=data, heldout=heldout, out=out, base=base, domain_tags=list(tags),
                      licence=licence, lora=lora, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                      router_lr=router_lr, precision=precision, seed=seed, num_pilots=num_pilots,
                      checkpoint_every=checkpoint_every, canaries=canaries, canary_repeats=canary_repeats,
                      dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_clip=dp_clip, train_lora_a=not freeze_lora_a,
                      resume=not no_resume,
                      overwrite=overwrite)
    if quiet:
        from cli.main import quiet_libraries

        quiet_libraries()
    if threads:
        import torch

        torch.set_num_threads(threads)
    with _progress(cfg, quiet, log_file) as on_step:
        result = train_expert(cfg, progress=not quiet, on_step=on_step)
    m = result.manifest.metrics
    click.echo(f"wrote {result.out}")
    if "dp" in result.manifest.training:
        dp = result.manifest.training["dp"]
        click.echo(f"DP-SGD: epsilon {dp['epsilon']} delta {dp['delta']} clip {dp['clipping_norm']} "
                   f"noise multiplier {dp['noise_multiplier']}")
    if m:
        click.echo(f"held-out loss: base {m['base_loss']:.4f} -> expert {m['expert_loss']:.4f} "
                   f"(ppl {m['base_ppl']:.2f} -> {m['expert_ppl']:.2f})")


@contextlib.contextmanager
def _progress(cfg, quiet: bool, log_file: str | None):
    """The ``on_step`` hook: None with the progress bar; with --quiet a ProgressLine on the terminal or a file."""
    import sys

    from expertmesh.expert.progress import ProgressLine

    if not quiet:
        yield None
        return
    tokens = cfg.batch_size * cfg.seq_len
    if sys.stderr.isatty():
        yield ProgressLine(cfg.name, cfg.steps, tokens, sys.stderr, tty=True)
        return
    path = Path(log_file or f"{cfg.out}.train.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        yield ProgressLine(cfg.name, cfg.steps, tokens, f, tty=False)


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


@expert.command("import")
@click.argument("adapter_dir", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="Your corpus (dir, .jsonl or .txt): used here only for the signature and held-out metrics.")
@click.option("--name", required=True, help="Expert name (lowercase, e.g. 'law').")
@click.option("--owner", required=True, help="Your owner name in the registry.")
@click.option("--out", required=True, type=click.Path(), help="Output package directory (written atomically).")
@click.option("--heldout", type=click.Path(), default=None, help="Held-out .jsonl/.txt (default: <data>/heldout.jsonl).")
@click.option("--base", default=None, help="Base model dir or 'smollm2-135m-instruct' (default).")
@click.option("--trained-on", type=click.Path(), default=None,
              help="The base directory the adapter was trained on, when its adapter_config names a hub id "
                   "(its fingerprint must equal --base's).")
@click.option("--tag", "tags", multiple=True, help="Domain tag (repeatable; default: the expert name).")
@click.option("--licence", default="unspecified", show_default=True, help="Licence of the expert (SPDX id).")
@click.option("--seq-len", default=256, show_default=True, type=int)
@click.option("--pilots", "num_pilots", default=8, show_default=True, type=int, help="RouterRetriever pilot embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def import_cmd(adapter_dir, data, name, owner, out, heldout, base, trained_on, tags, licence, seq_len, num_pilots,
               overwrite) -> None:
    """Turn a plain-PEFT LoRA adapter (LoraConfig + save_pretrained, same base) into an expert package.

    The weights are kept as they are; the router signature is computed from --data on this machine. Refused:
    another base (checked by fingerprint), DoRA, modules_to_save, LoRA biases, non-decoder target modules.

    Example: expertmesh expert import peft-out/law --data data/corpora/law --name law --owner acme --out experts/law
    """
    from expertmesh.expert.import_peft import ImportConfig, import_peft_adapter

    cfg = ImportConfig(adapter=adapter_dir, name=name, owner=owner, data=data, out=out, heldout=heldout, base=base,
                       trained_on=trained_on, domain_tags=list(tags), licence=licence, seq_len=seq_len,
                       num_pilots=num_pilots, overwrite=overwrite)
    manifest = import_peft_adapter(cfg)
    m = manifest.metrics
    click.echo(f"wrote {out} (rank {manifest.lora.r}, {', '.join(manifest.lora.target_modules)})")
    if m:
        click.echo(f"held-out loss: base {m['base_loss']:.4f} -> expert {m['expert_loss']:.4f} gated "
                   f"({m['ungated_loss']:.4f} ungated, as plain PEFT runs it)")


@expert.command("inspect")
@click.argument("package", type=click.Path())
def inspect_cmd(package) -> None:
    """Verify a package (files, checksums, shapes) and print its manifest.

    Example: expertmesh expert inspect experts/law
    """
    from expertmesh.expert.package import verify_package

    manifest = verify_package(Path(package))
    click.echo(json.dumps(manifest.to_dict(), indent=2))


from cli.expert_audit import audit_cmd  # noqa: E402  (its own module: the audit is its own job)

expert.add_command(audit_cmd)


def register(group: click.Group) -> None:
    group.add_command(expert)
