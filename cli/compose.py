"""``expertmesh compose`` (coordinator: build, inspect, eval) and ``expertmesh generate`` / ``expertmesh route``
(anyone: run or explain a composition, local directory or registry name)."""
from __future__ import annotations

import json
from pathlib import Path

import click

_REQUEST_OPTIONS = [
    click.option("--include", multiple=True, help="Only these experts may answer (repeatable)."),
    click.option("--exclude", multiple=True, help="These experts must not answer (repeatable)."),
    click.option("--tag", "tags", multiple=True, help="Only experts carrying one of these domain tags."),
    click.option("--exclude-tag", "exclude_tags", multiple=True, help="No expert carrying this tag."),
    click.option("--licence", "licences", multiple=True, help="Only experts under one of these licences."),
    click.option("--selection", type=click.Choice(["token", "sequence", "both"]), default=None,
                 help="Override the composition's routing policy for this request."),
    click.option("--experts", "experts_dir", type=click.Path(), default=None,
                 help="Local composition: directory holding one expert package per member name."),
    click.option("--base", default=None, help="Base model dir (default: the one the composition names)."),
    click.option("--top-k", "top_k", type=click.IntRange(min=1), default=None,
                 help="Override the composition's experts per token for this run."),
]


def _request_options(f):
    for opt in reversed(_REQUEST_OPTIONS):
        f = opt(f)
    return f


def _plan_kwargs(include, exclude, tags, exclude_tags, licences, selection) -> dict:
    return {"include": list(include) or None, "exclude": list(exclude) or None, "tags": list(tags) or None,
            "exclude_tags": list(exclude_tags) or None, "licences": list(licences) or None, "selection": selection}


def open_runtime(composition: str, experts_dir: str | None, base_spec: str | None, top_k: int | None = None):
    """A local composition dir (with --experts) or a registry composition NAME[@VERSION]; ``top_k`` overrides
    the composition's experts per token (what ``serve --top-k`` does)."""
    from expertmesh.base import load_base

    rt = load_runtime(composition, experts_dir, load_base(base_spec) if base_spec else None)
    return apply_top_k(rt, top_k)


def apply_top_k(rt, top_k: int | None):
    """``rt`` with its router's experts per token set to ``top_k`` (None: the composition's own); a router
    without one is a ConfigError, and ``rt`` is closed."""
    if top_k is not None:
        from expertmesh.errors import ConfigError

        router = getattr(rt.model, "router", None)
        if router is None or not hasattr(router, "top_k"):
            rt.close()
            raise ConfigError(f"--top-k does not apply to a {rt.spec.router_type!r} composition")
        router.top_k = top_k
    return rt


def effective_top_k(rt) -> int:
    router = getattr(rt.model, "router", None)
    return int(getattr(router, "top_k", rt.spec.top_k))


def load_runtime(composition: str, experts_dir, base=None):
    """A local composition dir (its members' packages in ``experts_dir``: one dir of packages or a name -> dir
    mapping) or a registry NAME[@VERSION], on ``base`` (a loaded Base; None: the composition's own)."""
    from expertmesh.compose.runtime import CompositionRuntime
    from expertmesh.errors import ConfigError

    if (Path(composition) / "composition.json").is_file():
        if not experts_dir:
            raise ConfigError("a local composition needs --experts DIR (one package per member name inside)")
        return CompositionRuntime.load(composition, experts_dir, base)
    if "/" in composition or Path(composition).exists():
        raise ConfigError(f"{composition} is not a composition directory (no composition.json)")
    from clients.registry_client import RegistryClient

    from expertmesh.compose.remote import load_remote_runtime

    from expertmesh.validate import split_ref

    name, version = split_ref(composition)
    with RegistryClient.from_config() as reg:
        return load_remote_runtime(reg, name, version, base=base)


@click.group()
def compose() -> None:
    """Build and inspect compositions of published experts (coordinator side).

    Example: expertmesh compose build clinic --router retrieve --top-m 2
    """


@compose.command("build")
@click.argument("name")
@click.option("--router", "router_type", default="domain", show_default=True,
              help="Router type: domain | retrieve | tuned (| mot when router_training is installed).")
@click.option("--local", "local", multiple=True, type=click.Path(),
              help="Build from local expert packages (a package dir or a dir of packages; repeatable) "
                   "instead of the registry.")
@click.option("--expert", "names", multiple=True, help="Registry: only these experts (default: all active).")
@click.option("--domain", default=None, help="Registry: only active experts of this domain tag.")
@click.option("--top-k", type=int, default=None, help="Experts per token (default 2).")
@click.option("--top-m", type=int, default=None, help="Retriever candidates per request (default: type's).")
@click.option("--selection", type=click.Choice(["token", "sequence", "both"]), default=None)
@click.option("--min-score", type=float, default=None,
              help="Retriever: members scoring below this cosine are never candidates, so prompts no expert "
                   "resembles are answered by the public base (see BENCHMARKS.md for measured scores).")
@click.option("--pilot-score", type=click.Choice(["mean", "top3", "max"]), default="mean", show_default=True,
              help="Retriever: a member's score is the mean, the mean of the best 3, or the best of its pilots' "
                   "cosine similarities to the prompt (top3 routed best at 64 fine domains; --min-score was "
                   "calibrated on mean).")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Gate temperature.")
@click.option("--artifact", type=click.Path(), default=None, help="tuned: safetensors of a router-tuning run.")
@click.option("--description", default="")
@click.option("--out", type=click.Path(), default=None, help="Write the package here (default for --local: "
                                                             "./compositions/NAME).")
@click.option("--publish/--no-publish", default=None,
              help="Store in the registry (default: yes from the registry, no with --local).")
@click.option("--overwrite", is_flag=True)
def build_cmd(name, router_type, local, names, domain, top_k, top_m, selection, min_score, pilot_score, temperature,
              artifact, description, out, publish, overwrite) -> None:
    """Build a composition: verify members, build router artifacts, write and/or store it.

    Example: expertmesh compose build clinic --router retrieve --top-m 2
    Example: expertmesh compose build demo --local experts/ --router domain --out compositions/demo
    """
    opts = dict(top_k=top_k, top_m=top_m, selection=selection, min_score=min_score, pilot_score=pilot_score,
                temperature=temperature, description=description)
    if artifact:
        opts["artifact"] = artifact
    if local:
        from expertmesh.compose.build import build_composition, expert_package_dirs

        dirs: dict = {}
        for p in local:
            p = Path(p)
            found = expert_package_dirs([p] if (p / "manifest.json").is_file() else p)
            dirs.update(found)
        if names:
            dirs = {n: d for n, d in dirs.items() if n in set(names)}
        target = Path(out or Path("compositions") / name)
        spec, _ = build_composition(name, dirs, router_type, out=target, overwrite=overwrite,
                                    provenance={"source": "local"}, **opts)
        click.echo(f"wrote {target}: {spec.router_type} composition of {', '.join(spec.member_names)}")
        if publish:
            from clients.registry_client import RegistryClient

            with RegistryClient.from_config() as reg:
                r = reg.publish_composition(target)
            click.echo(f"stored {r.name}@{r.version}" + ("" if r.created else " (identical to an existing version)"))
        return
    from clients.registry_client import RegistryClient

    from expertmesh.compose.remote import build_from_registry

    with RegistryClient.from_config() as reg:
        spec, r = build_from_registry(reg, name, router_type, names=list(names) or None, domain=domain,
                                      publish=publish is not False, out=out, overwrite=overwrite, **opts)
    click.echo(f"built {spec.router_type} composition {name} of "
               + ", ".join(f"{m.name}@{m.version}" for m in spec.members))
    if r is not None:
        click.echo(f"stored {r.name}@{r.version}" + ("" if r.created else " (identical to an existing version)"))


@compose.command("inspect")
@click.argument("directory", type=click.Path())
def inspect_cmd(directory) -> None:
    """Verify a composition package (files, checksums, tensor shapes) and print its composition.json.

    Example: expertmesh compose inspect compositions/clinic
    """
    from expertmesh.compose.spec import verify_composition

    click.echo(json.dumps(verify_composition(directory).to_dict(), indent=2))


@compose.command("eval")
@click.argument("composition")
@click.option("--data", "datas", required=True, multiple=True, type=click.Path(),
              help="Corpus dir (uses heldout.jsonl), .jsonl or .txt; repeatable with --compare.")
@click.option("--compare", is_flag=True,
              help="Per corpus: base, each expert alone, oracle (best single expert), the composition as it "
                   "routes, and sequence routing accuracy (corpus dir name = the expected expert's name or tag).")
@click.option("--seq-len", default=256, show_default=True, type=int)
@click.option("--max-blocks", default=16, show_default=True, type=int)
@click.option("--opt-out-blocks", default=2, show_default=True, type=click.IntRange(min=0),
              help="With --compare: blocks per corpus on which each expert's per-request opt-out is checked "
                   "against the composition without it (max |logit diff|); 0 skips the check.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--store", is_flag=True,
              help="Keep the results (one per --data) in the local composition's provenance; the registry's "
                   "composition page shows them as its routing heat map once published.")
@_request_options
def eval_cmd(composition, datas, compare, seq_len, max_blocks, opt_out_blocks, as_json, store, include, exclude, tags,
             exclude_tags, licences, selection, experts_dir, base, top_k) -> None:
    """Held-out loss and perplexity of the public base vs the composition (with any request policy).

    Example: expertmesh compose eval compositions/clinic --experts experts/ --data data/corpora/law --exclude law
    Example: expertmesh compose eval compositions/clinic --experts experts/ --data data/corpora/law --data data/corpora/medicine --compare
    Example: expertmesh compose eval compositions/clinic --experts experts/ --data data/corpora/law --data data/corpora/medicine --store
    """
    import math

    from expertmesh.compose.evaluate import (
        compare_on_corpora, compare_table_text, corpora_by_name, evaluate_composition,
    )
    from expertmesh.errors import ConfigError

    if len(datas) > 1 and not (compare or store):
        raise ConfigError("several --data corpora need --compare (one table over all of them) or --store")
    if store and (compare or not Path(composition).is_dir()):
        raise ConfigError("--store keeps results in a local composition directory, without --compare; "
                          f"{composition!r} is not one" if not compare else "--store and --compare do not combine")
    for d in datas:
        if not Path(d).exists():
            raise ConfigError(f"--data {d} does not exist")
    corpora = corpora_by_name(datas) if compare else {}      # checked before the model loads
    rt = open_runtime(composition, experts_dir, base, top_k)
    if store:
        from expertmesh.compose.spec import store_evaluation

        results = [evaluate_composition(rt, d, seq_len=seq_len, max_blocks=max_blocks,
                                        **_plan_kwargs(include, exclude, tags, exclude_tags, licences, selection))
                   for d in datas]
        store_evaluation(composition, results)
        click.echo(json.dumps(results, indent=2) if as_json else
                   f"stored {len(results)} evaluation(s) in {Path(composition) / 'composition.json'}")
        return
    if compare:
        table = compare_on_corpora(rt, corpora, seq_len=seq_len, max_blocks=max_blocks, opt_out_blocks=opt_out_blocks)
        click.echo(json.dumps(table, indent=2) if as_json else compare_table_text(table))
        return
    data = datas[0]
    res = evaluate_composition(rt, data, seq_len=seq_len, max_blocks=max_blocks,
                               **_plan_kwargs(include, exclude, tags, exclude_tags, licences, selection))
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"{res['data']}: {res['blocks']} blocks x {seq_len} tokens")
    for k in ("base", "composition"):
        click.echo(f"  {k:<12} loss {res[k + '_loss']:.4f}  ppl {math.exp(res[k + '_loss']):.2f}")
    click.echo("  gate mass   " + ", ".join(f"{n} {v:.3f}" for n, v in res["gate_mass"].items()))


@click.command("generate")
@click.argument("composition")
@click.argument("prompt", nargs=-1, required=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print text and trace as JSON.")
@_request_options
def generate_cmd(composition, prompt, max_new_tokens, temperature, top_p, seed, as_json, include, exclude, tags,
                 exclude_tags, licences, selection, experts_dir, base, top_k) -> None:
    """Generate text with a composition (local dir with --experts, or a registry NAME[@VERSION]).

    Example: expertmesh generate compositions/clinic --experts experts/ "Aspirin is used for" --exclude law
    """
    rt = open_runtime(composition, experts_dir, base, top_k)
    text = " ".join(prompt)
    plan = rt.plan([text], **_plan_kwargs(include, exclude, tags, exclude_tags, licences, selection))
    g = rt.generate([text], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, plan=plan,
                    seed=seed)[0]
    if as_json:
        click.echo(json.dumps({"text": g.text, "trace": g.trace}, indent=2))
        return
    click.echo(g.text)
    mass = g.trace.get("gate_mass", {})
    click.echo(f"-- experts: {', '.join(g.trace.get('candidates', [])) or 'none (public base)'}; gate mass "
               + ", ".join(f"{n} {v:.3f}" for n, v in mass.items() if v > 0), err=True)
    for note in g.trace.get("notes", []) + rt.notes:
        click.echo(f"-- note: {note}", err=True)


@click.command("route")
@click.argument("composition")
@click.argument("prompt", nargs=-1)
@click.option("--file", "prompt_file", type=click.Path(dir_okay=False), default=None,
              help="Route every non-blank line of this file (one prompt per line), in batches of --batch-size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON (with --file: one JSON object per line).")
@_request_options
def route_cmd(composition, prompt, prompt_file, batch_size, as_json, include, exclude, tags, exclude_tags, licences,
              selection, experts_dir, base, top_k) -> None:
    """Explain routing of a prompt: candidate experts, retriever scores, gate mass overall and per layer.

    Example: expertmesh route compositions/clinic --experts experts/ "The licensee shall not"
    Example: expertmesh route compositions/clinic --experts experts/ --file prompts.txt --json
    """
    from expertmesh.errors import InvalidInputError

    if bool(prompt) == bool(prompt_file):
        raise InvalidInputError("give a PROMPT or --file PROMPTS.txt (one prompt per line), not both or neither")
    texts = [" ".join(prompt)] if prompt else _prompt_lines(prompt_file)   # checked before the model loads
    rt = open_runtime(composition, experts_dir, base, top_k)
    if prompt_file:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            plan = rt.plan(chunk, **_plan_kwargs(include, exclude, tags, exclude_tags, licences, selection))
            for text, r in zip(chunk, rt.route(chunk, plan)):
                if as_json:
                    click.echo(json.dumps({"prompt": text, **r}))
                else:
                    mass = ", ".join(f"{n} {v:.3f}" for n, v in r["gate_mass"].items())
                    click.echo(f"{', '.join(r['candidates']) or 'public'}\t{mass}\t{text[:60]}")
        return
    text = texts[0]
    plan = rt.plan([text], **_plan_kwargs(include, exclude, tags, exclude_tags, licences, selection))
    r = rt.route([text], plan)[0]
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"composition {rt.spec.ref} ({rt.spec.router_type}, selection {r['selection']}, "
               f"top-k {effective_top_k(rt)}); {r['tokens']} prompt tokens")
    if r["scores"]:
        click.echo("retriever scores: " + ", ".join(f"{n} {s:.3f}" for n, s in
                                                    sorted(r["scores"].items(), key=lambda x: -x[1])))
    click.echo("candidates: " + (", ".join(r["candidates"]) or "none (public base)"))
    if "fixed_weights" in r:
        click.echo("sequence weights: " + ", ".join(f"{n} {w:.3f}" for n, w in r["fixed_weights"].items()))
    entries = list(r["gate_mass"])
    click.echo("gate mass (mean over tokens and layers): "
               + ", ".join(f"{n} {r['gate_mass'][n]:.3f}" for n in entries))
    click.echo("layer  " + "  ".join(f"{n[:10]:>10}" for n in entries))
    for i, row in enumerate(r.get("per_layer", [])):
        click.echo(f"{i:>5}  " + "  ".join(f"{row[n]:>10.3f}" for n in entries))
    for note in r["notes"] + rt.notes:
        click.echo(f"note: {note}")


def _prompt_lines(path: str) -> list[str]:
    from expertmesh.corpora.records import read_utf8
    from expertmesh.errors import DataError

    lines = [ln.strip() for ln in read_utf8(Path(path)).splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: no prompts (the file is empty); put one prompt per line")
    return lines


def register(group: click.Group) -> None:
    group.add_command(compose)
    group.add_command(generate_cmd)
    group.add_command(route_cmd)
