"""``expertmesh bench``: measure every composition method on multi-domain data, with plots; ``--own``: the user's
experts on the user's held-out corpora (cli/bench_own.py)."""
from __future__ import annotations

import shlex
import sys

import click


@click.command("bench")
@click.option("--quick", "mode", flag_value="quick", default=True,
              help="Default: real corpora, small budgets; < 15 min on 2 CPU cores.")
@click.option("--full", "mode", flag_value="full", help="Bigger corpora, budgets and evaluation (~2-3 h on 2 cores).")
@click.option("--tiny", is_flag=True, help="Config-built tiny model and synthetic corpora (seconds; for tests).")
@click.option("--out", default="runs/bench", show_default=True, type=click.Path(),
              help="Work folder: corpora, cached experts, results.json, plots.")
@click.option("--domains", default=None, help="Comma-separated domains (default: all six built-in domains).")
@click.option("--expert-domains", type=int, default=None,
              help="How many of the available domains get an expert; the rest are evaluated as uncovered.")
@click.option("--reuse", is_flag=True, help="Reuse built corpora and cached experts under --out (keyed by config "
                                            "digest + base fingerprint + data digest).")
@click.option("--base", default=None, help="Base model dir (default: smollm2-135m-instruct; --tiny builds one).")
@click.option("--markdown", default=None, type=click.Path(),
              help="BENCHMARKS.md to update (only its mesh-bench section). Default: BENCHMARKS.md, or "
                   "<out>/BENCHMARKS.md with --tiny.")
@click.option("--publish-dir", default=None, type=click.Path(),
              help="Tracked folder receiving results.json and the plots (default: benchmarks/mesh-bench; none "
                   "with --tiny).")
@click.option("--steps", type=int, default=None, help="Override the per-expert step budget.")
@click.option("--eval-blocks", type=int, default=None,
              help="Override held-out blocks per domain (--own: per corpus, default 16).")
@click.option("--from-results", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Only re-draw plots and the markdown section from an earlier results.json (no model runs).")
@click.option("--threads", type=int, default=None,
              help="torch threads (default: 1 when the load average exceeds 3/4 of the cores, else all cores).")
@click.option("--own", is_flag=True,
              help="Benchmark your own experts on your own held-out corpora (--data, with --local and/or "
                   "--expert); writes <out>/own-bench.json and own-bench.txt. The options below are for --own.")
@click.option("--data", "datas", multiple=True, type=click.Path(),
              help="--own: a held-out corpus (dir with heldout.jsonl, .jsonl or .txt), named like the expert or "
                   "domain tag expected to answer it; repeatable.")
@click.option("--local", "local", multiple=True, type=click.Path(),
              help="--own: local expert packages (a package dir or a dir of packages); repeatable.")
@click.option("--expert", "published", multiple=True,
              help="--own: a published expert NAME[@VERSION], pulled with the current login (or --profile).")
@click.option("--router", "routers", multiple=True, default=("domain", "retrieve"), show_default=True,
              help="--own: build one composition of the experts per router type; repeatable.")
@click.option("--composition", "compositions", multiple=True,
              help="--own: also score this composition (local dir over the same experts, or registry "
                   "NAME[@VERSION]); repeatable.")
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True, help="--own: block length.")
@click.option("--opt-out-blocks", type=click.IntRange(min=0), default=2, show_default=True,
              help="--own: blocks per corpus for each expert's opt-out exactness check (0 skips it).")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=None,
              help="--own: override every scored composition's experts per token (as compose eval --top-k).")
def bench(mode, tiny, out, domains, expert_domains, reuse, base, markdown, publish_dir, steps, eval_blocks,
          threads, from_results, own, datas, local, published, routers, compositions, seq_len,
          opt_out_blocks, top_k) -> None:
    """Build corpora, train/reuse experts, evaluate every method; write results.json, plots, BENCHMARKS.md.

    With --own: score your own experts (local or published) on your own held-out corpora: base, each expert
    alone, oracle, one composition per --router plus any --composition, routing accuracy, opt-out exactness.

    Example: nice -n 5 expertmesh bench --quick --out runs/bench
    Example: expertmesh bench --own --local experts/ --data data/corpora/law --data data/corpora/medicine --out runs/own-bench
    """
    if own:
        _bench_own(datas, local, published, routers, compositions, base, out, seq_len, eval_blocks, opt_out_blocks,
                   threads, top_k)
        return
    if datas or local or published or compositions or top_k is not None:
        from expertmesh.errors import ConfigError

        raise ConfigError("--data, --local, --expert, --composition and --top-k belong to --own (your own experts and "
                          "corpora); add --own, or use --domains for the built-in benchmark")
    from benchmarks.mesh import preset, run_bench

    if from_results:
        from benchmarks.mesh.harness import render_from_results

        res = render_from_results(from_results, markdown_path=markdown or ("BENCHMARKS.md" if not tiny else None),
                                  publish_dir=publish_dir or (None if tiny else "benchmarks/mesh-bench"))
        click.echo(f"markdown: {res['markdown']}")
        return
    mode = "tiny" if tiny else mode
    over = dict(out=out, reuse=reuse, base=base, expert_domains=expert_domains, steps=steps,
                eval_blocks=eval_blocks, threads=threads, domains=[d.strip() for d in domains.split(",") if d.strip()]
                if domains else None)
    cfg = preset(mode, **over)
    if markdown is None:
        markdown = None if tiny else "BENCHMARKS.md"
    if publish_dir is None and not tiny:
        publish_dir = "benchmarks/mesh-bench"
    command = "expertmesh " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    res = run_bench(cfg, command=command, log=lambda m: click.echo(m, err=True), markdown_path=markdown,
                    publish_dir=publish_dir)
    click.echo(f"results: {cfg.out}/results.json")
    click.echo(f"markdown: {res['markdown']}")
    for name in ("base", "oracle", "domain-router-k2", "retriever-top1", "central-pooled-lora"):
        r = res["rows"].get(name)
        if r and r["mixture_ppl"] is not None:
            click.echo(f"  {name:22s} mixture ppl {r['mixture_ppl']:.2f}")


def _bench_own(datas, local, published, routers, compositions, base, out, seq_len, eval_blocks, opt_out_blocks,
               threads, top_k) -> None:
    from pathlib import Path

    from cli.bench_own import run_own_bench
    from expertmesh.compose.evaluate import corpora_by_name
    from expertmesh.errors import ConfigError

    # Checked before the base model loads (20 s or more on the real base).
    if not datas:
        raise ConfigError("bench --own needs at least one --data held-out corpus")
    for p in list(datas) + list(local):
        if not Path(p).exists():
            raise ConfigError(f"{p} does not exist")
    corpora = corpora_by_name(datas)
    if threads:
        import torch

        torch.set_num_threads(threads)
    command = "expertmesh " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    res = run_own_bench(corpora=corpora, local=list(local), published=list(published), routers=list(routers),
                        compositions=list(compositions), base_spec=base, out=Path(out), seq_len=seq_len,
                        max_blocks=eval_blocks or 16, opt_out_blocks=opt_out_blocks, command=command,
                        log=lambda m: click.echo(m, err=True), top_k=top_k)
    click.echo(res["text"])
    click.echo(f"results: {Path(out) / 'own-bench.json'}")


def register(group) -> None:
    group.add_command(bench)
