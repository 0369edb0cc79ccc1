"""``expertmesh demo``: the whole platform end to end on one machine, with a real base and real text.

1. builds law, medicine and code corpora from installed packages (held-out split by whole document);
2. three owners each train an expert on their own corpus and publish it to a registry (SQLite + artifact
   store, served over HTTP on 127.0.0.1);
3. a coordinator pulls the active experts, builds a domain-router composition and stores it in the registry;
4. generation with routing traces, and a per-request opt-out checked to be exact;
5. the medicine owner withdraws its expert: the coordinator sees the change feed and stops using it.
"""
from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path

import click

DOMAINS = ("law", "medicine", "code")
PROMPTS = {
    "law": "Permission is hereby granted, free of charge, to any person obtaining a copy of this software",
    "medicine": "Acute bronchitis due to Mycoplasma pneumoniae. Excludes: chronic obstructive pulmonary disease with",
    "code": "def read_config(path):\n    \"\"\"Read a JSON config file.\"\"\"\n    with open(path) as f:",
}


class _LiveRegistry:
    """The registry app under uvicorn on a free loopback port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the demo registry did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _say(step: str) -> None:
    click.echo(click.style(f"\n== {step}", bold=True))


def _corpora(work: Path, tiny: bool, max_docs: int) -> dict[str, Path]:
    from expertmesh.corpora import build_corpus, write_records

    out = {}
    for d in DOMAINS:
        target = work / "corpora" / d
        if not (target / "meta.json").is_file() and not (tiny and target.is_dir()):
            if tiny:
                from expertmesh.testing import TINY_TEXTS
                target.mkdir(parents=True, exist_ok=True)
                texts = TINY_TEXTS[d]
                write_records(target / "train.jsonl", [{"id": f"{d}/{i}", "text": texts[i % 2]} for i in range(30)])
                write_records(target / "heldout.jsonl", [{"id": f"{d}/h", "text": " ".join(texts)}])
            else:
                meta = build_corpus(d, work / "corpora", max_docs=max_docs)
                tr, ho = meta["splits"]["train"], meta["splits"]["heldout"]
                click.echo(f"  {d}: {tr['docs']:,} train docs ({tr['chars']:,} chars), "
                           f"{ho['docs']:,} held-out docs ({ho['chars']:,} chars)")
        out[d] = target
    return out


@click.command()
@click.option("--tiny", is_flag=True, help="Tiny config-built model and toy text: a smoke test in seconds.")
@click.option("--work", default="runs/demo", show_default=True, type=click.Path(), help="Working directory.")
@click.option("--steps", default=30, show_default=True, type=int, help="Training steps per expert.")
@click.option("--max-docs", default=300, show_default=True, type=int, help="Documents per corpus.")
@click.option("--fresh", is_flag=True, help="Retrain experts even if the work directory already has them.")
def demo(tiny, work, steps, max_docs, fresh) -> None:
    """Run the whole platform end to end: corpora, owners, registry, composition, opt-out, withdrawal.

    The full demo takes about 10-15 minutes on 2 CPU cores; --tiny takes seconds.

    Example: expertmesh demo
    Example: expertmesh demo --tiny
    """
    import shutil

    import torch

    from clients.registry_client import RegistryClient
    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.exactness import EXACT_TOL
    from expertmesh.compose.runtime import CompositionRuntime
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert
    from registry.app import create_app
    from registry.settings import RegistrySettings

    work = Path(work)
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _say("base model")
    if tiny:
        from expertmesh.testing import make_tiny_base
        base_dir = work / "tiny-base"
        if not (base_dir / "config.json").is_file():
            make_tiny_base(base_dir)
        base = load_base(str(base_dir))
        steps, seq_len, batch = min(steps, 10), 32, 4
    else:
        base = load_base()
        seq_len, batch = 128, 8
    click.echo(f"  {base.path}  fingerprint {base.fingerprint[:16]}  layers {base.num_layers}  hidden {base.hidden_size}")

    _say("1. real corpora (held-out split by whole document)")
    corpora = _corpora(work, tiny, max_docs)

    _say("2. owners train experts on their own machines")
    experts = {}
    for d in DOMAINS:
        out = work / "owners" / d / "expert"
        if fresh or not (out / "manifest.json").is_file():
            cfg = TrainConfig(name=d, owner=f"{d}-owner", data=str(corpora[d]), out=str(out),
                              base=str(base.path) if tiny else None, domain_tags=[d], licence="apache-2.0",
                              steps=steps, batch_size=batch, seq_len=seq_len, eval_blocks=8 if not tiny else 2,
                              lora=LoraSpec(r=8 if d == "code" else 16, alpha=16 if d == "code" else 32),
                              num_pilots=4 if not tiny else 2, overwrite=True)
            train_expert(cfg, base=base, progress=not tiny)
        experts[d] = out
        from expertmesh.expert.package import read_manifest
        m = read_manifest(out).metrics
        if m:
            click.echo(f"  {d:9s} held-out loss {m['base_loss']:.3f} (base) -> {m['expert_loss']:.3f} (expert)")

    _say("3. registry: owners publish, a coordinator composes")
    admin = secrets.token_urlsafe(16)
    settings = RegistrySettings(data_dir=work / "registry", admin_token=admin, base_fingerprint=base.fingerprint)
    with _LiveRegistry(create_app(settings)) as live:
        root = RegistryClient(live.url, admin)
        tokens = {}
        for d in DOMAINS:
            if f"{d}-owner" not in {o.name for o in root.list_owners()}:
                root.create_owner(f"{d}-owner")
            tokens[d] = root.create_token(f"{d}-owner", ["publish", "read"]).token
        if "coordinator" not in {o.name for o in root.list_owners()}:
            root.create_owner("coordinator")
        coord = RegistryClient(live.url, root.create_token("coordinator", ["coordinate", "read"]).token)
        for d in DOMAINS:
            res = RegistryClient(live.url, tokens[d]).publish(experts[d])
            click.echo(f"  {d}-owner published {res.name}@{res.version} (registry revision {res.revision})")
        active = coord.list_experts(status="active").items
        pulled = {}
        for e in active:
            pulled[e.name] = coord.pull(e.name, "latest", work / "coordinator" / "experts" / e.name, overwrite=True,
                                    expected_fingerprint=base.fingerprint)
        comp_dir = work / "coordinator" / "composition"
        build_composition("demo-mesh", pulled, "domain", base=base, out=comp_dir, overwrite=True, top_k=2)
        stored = coord.publish_composition(comp_dir)
        click.echo(f"  coordinator stored composition {stored.name}@{stored.version}")
        revision, _ = coord.revision()

        _say("4. generation with routing traces")
        rt = CompositionRuntime.load(comp_dir, pulled, base)
        prompts = [PROMPTS[d] for d in DOMAINS]
        for d, g in zip(DOMAINS, rt.generate(prompts, max_new_tokens=24 if not tiny else 8)):
            mass = g.trace.get("gate_mass", {})
            click.echo(f"  [{d}] ...{g.text[:80]!r}")
            click.echo("        gate mass: " + ", ".join(f"{k} {v:.2f}" for k, v in mass.items()))

        _say("5. per-request opt-out is exact")
        enc = base.tokenizer(prompts, return_tensors="pt", padding=True)
        excluded = rt.logits(enc["input_ids"], enc["attention_mask"], rt.plan(prompts, exclude=["law"]))
        without_dir = work / "coordinator" / "without-law"
        build_composition("demo-without-law", {k: v for k, v in pulled.items() if k != "law"}, "domain", base=base,
                          out=without_dir, overwrite=True, top_k=2)
        rt.close()
        rt2 = CompositionRuntime.load(without_dir, pulled, base)
        never = rt2.logits(enc["input_ids"], enc["attention_mask"], rt2.plan(prompts))
        rt2.close()
        diff = float((excluded - never).abs().max())
        click.echo(f"  max |logit difference|, 'exclude law' vs a composition that never had law: {diff:.2e}")
        if diff > EXACT_TOL:
            raise click.ClickException("opt-out was not exact")

        _say("6. the medicine owner withdraws its expert")
        RegistryClient(live.url, tokens["medicine"]).withdraw("medicine", reason="consent withdrawn")
        page = coord.changes(since=revision)
        click.echo(f"  change feed since revision {revision}: " +
                   ", ".join(f"{ev.kind} {ev.name}" for ev in page.events))
        rt = CompositionRuntime.load(comp_dir, pulled, base)
        still_active = {e.name for e in coord.list_experts(status="active").items}
        rt.set_withdrawn([m for m in rt.member_names if m not in still_active])
        g = rt.generate([PROMPTS["medicine"]], max_new_tokens=8)[0]
        click.echo("  medicine prompt now routes to: " +
                   ", ".join(f"{k} {v:.2f}" for k, v in g.trace.get("gate_mass", {}).items()))
        if g.trace.get("gate_mass", {}).get("medicine", 0.0) != 0.0:
            raise click.ClickException("withdrawn expert still received gate mass")
        rt.close()
    click.echo(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; artifacts under {work}")


def register(group: click.Group) -> None:
    group.add_command(demo)
