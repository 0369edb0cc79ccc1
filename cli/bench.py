"""``expertmesh bench``: measure every composition method on multi-domain data, with plots."""
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
@click.option("--eval-blocks", type=int, default=None, help="Override held-out blocks per domain.")
@click.option("--from-results", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Only re-draw plots and the markdown section from an earlier results.json (no model runs).")
@click.option("--threads", type=int, default=None,
              help="torch threads (default: 1 when the load average exceeds 3/4 of the cores, else all cores).")
def bench(mode, tiny, out, domains, expert_domains, reuse, base, markdown, publish_dir, steps, eval_blocks,
          threads, from_results) -> None:
    """Build corpora, train/reuse experts, evaluate every method; write results.json, plots, BENCHMARKS.md.

    Example: nice -n 5 expertmesh bench --quick --out runs/bench
    """
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


def register(group) -> None:
    group.add_command(bench)
