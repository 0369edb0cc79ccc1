"""Fixtures of the serving tests: tiny expert packages made in milliseconds, compositions, live servers.

The packages are valid (verify_package accepts them, PEFT could load them) but their LoRA factors and router
rows are random instead of trained: serving is about batching, masks and routing, not about quality, and
random non-zero B matrices make every expert change the logits (a trained tiny expert may not).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.live_server import LiveServer, free_port  # noqa: F401  (tests import them from here)

MEMBERS = {   # name -> (target modules, rank, tags): different shapes on purpose (HDEE-style)
    "medicine": (["q_proj", "v_proj"], 4, ["medicine"]),
    "law": (["q_proj", "v_proj", "down_proj"], 2, ["law", "legal"]),
    "code": (["o_proj"], 8, ["code"]),
}


def make_package(dest: Path, name: str, base, targets: list[str], r: int, tags: list[str], seed: int) -> Path:
    from expertmesh.expert.manifest import ExpertManifest, LoraSpec, SignatureSpec
    from expertmesh.expert.package import finalize_manifest, save_signature
    from expertmesh.mixture.lora_io import save_peft_adapter
    from expertmesh.mixture.model import adaptable_modules, resolve_targets

    dest.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    model = base.model
    linears = adaptable_modules(model)
    lora = {p: (torch.randn(r, linears[p].in_features, generator=g) * 0.3,
                torch.randn(linears[p].out_features, r, generator=g) * 0.3)
            for p in resolve_targets(model, targets)}
    spec = LoraSpec(r=r, alpha=2.0 * r, dropout=0.0, target_modules=targets)
    save_peft_adapter(dest, lora, spec, "tiny")
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    anchor = torch.randn(L, d, generator=torch.Generator().manual_seed(1000))      # shared public row
    pilots = torch.nn.functional.normalize(torch.randn(2, 384, generator=g), dim=-1)
    save_signature(dest, torch.randn(L, d, generator=g) * 2.0, anchor, pilots)
    manifest = ExpertManifest(name=name, owner="acme", base_fingerprint=base.fingerprint, lora=spec,
                              signature=SignatureSpec(num_layers=L, hidden_size=d, num_pilots=2, embed_dim=384,
                                                      embedder="test-embedder"),
                              domain_tags=tags, licence="Apache-2.0")
    finalize_manifest(dest, manifest)
    return dest


@pytest.fixture(scope="session")
def serving_experts(tmp_path_factory, tiny_base_dir) -> dict[str, Path]:
    from expertmesh.base import load_base

    base = load_base(str(tiny_base_dir))
    root = tmp_path_factory.mktemp("serving-experts")
    return {name: make_package(root / name, name, base, t, r, tags, seed=i + 1)
            for i, (name, (t, r, tags)) in enumerate(MEMBERS.items())}


@pytest.fixture
def make_comp(tiny_base_dir, serving_experts):
    """make_comp(members=None, top_k=2) -> ServedComposition on a base of its own (runtimes wrap in place)."""
    from expertmesh.base import load_base
    from expertmesh.serving.composition import from_expert_dirs

    def make(members=None, top_k: int = 2, name: str = "tiny"):
        dirs = {n: serving_experts[n] for n in (members or list(MEMBERS))}
        return from_expert_dirs(name, load_base(str(tiny_base_dir)), dirs, top_k=top_k)
    return make


@pytest.fixture
def make_engine(make_comp):
    """make_engine(**settings) -> a started Engine; stopped after the test."""
    from expertmesh.serving.engine import Engine
    from expertmesh.serving.settings import ServeSettings

    engines = []

    def make(members=None, top_k: int = 2, **kw):
        kw.setdefault("max_context", 512)
        e = Engine(make_comp(members, top_k), ServeSettings(**kw)).start()
        engines.append(e)
        return e
    yield make
    for e in engines:
        e.stop()


def run_sync(engine, prompt: str, *, max_tokens: int = 8, temperature: float = 0.0, selection=None,
             trace_tokens: bool = False, **params):
    """Submit one request and wait: (text, done-event data)."""
    from expertmesh.serving.requests import SyncSink

    sink = SyncSink()
    submit(engine, prompt, sink, max_tokens=max_tokens, temperature=temperature, selection=selection,
           trace_tokens=trace_tokens, **params)
    return collect(sink)


def submit(engine, prompt, sink, *, max_tokens=8, temperature=0.0, selection=None, trace_tokens=False, **params):
    from expertmesh.serving.composition import Selection
    from expertmesh.serving.requests import GenerationRequest
    from expertmesh.serving.sampling import SamplingParams

    req = GenerationRequest(prompt, engine.comp.encode(prompt), SamplingParams(
        max_tokens=max_tokens, temperature=temperature, **params), selection or Selection(), trace_tokens)
    return engine.submit(req, sink)


def collect(sink, timeout: float = 60.0):
    text, done = "", None
    for ev in sink.events(timeout):
        if ev.kind == "delta":
            text += ev.data["text"]
        elif ev.kind == "done":
            done = ev.data
        elif ev.kind == "error":
            raise ev.error
    return text, done


@pytest.fixture
def make_app(make_comp):
    """make_app(**settings) -> (app, engine); the app's lifespan starts and stops the engine."""
    from serving.app import create_app
    from expertmesh.serving.engine import Engine
    from expertmesh.serving.settings import ServeSettings

    def make(members=None, top_k: int = 2, watcher=None, **kw):
        kw.setdefault("max_context", 512)
        kw.setdefault("max_tokens_limit", 400)
        settings = ServeSettings(**kw)
        engine = Engine(make_comp(members, top_k), settings)
        return create_app(settings, engine, watcher=watcher), engine
    return make
