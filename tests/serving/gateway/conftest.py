"""Fixtures of the gateway tests: fake vLLM workers on loopback ports, a tiny composition, a gateway app.

The composition is the serving tests' three tiny packages (medicine, law, code; random pilots). The
retriever's embedder is replaced by ``content_embed``: a prompt that names a member embeds as that member's
mean pilot, so a test steers routing by what it writes, through the real retriever (faiss, make_plan).
"""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tests.serving.conftest import LiveServer
from tests.serving.gateway.fake_vllm import FakeVLLM


@pytest.fixture(scope="session")
def gateway_composition(tmp_path_factory, serving_experts, tiny_base_dir):
    from expertmesh.base import load_base
    from expertmesh.compose import build_composition

    out = tmp_path_factory.mktemp("gateway-comp") / "composition"
    build_composition("mesh", serving_experts, "retrieve", base=load_base(str(tiny_base_dir)), out=out, top_k=2)
    return out


@pytest.fixture(scope="session")
def content_embed(gateway_composition):
    from expertmesh.compose.spec import read_composition

    spec, tensors = read_composition(gateway_composition)
    pilots, owner = tensors["pilots"].numpy(), tensors["pilot_owner"].numpy()
    centre = {n: pilots[owner == j].mean(0) for j, n in enumerate(spec.member_names)}

    def embed(texts):
        out = []
        for t in texts:
            v = next((centre[n] for n in spec.member_names if n in t), np.ones(pilots.shape[1]))
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)
    return embed


@pytest.fixture
def fake_workers():
    """fake_workers(n, **knobs) -> [(FakeVLLM, url)], each on its own uvicorn thread; stopped after the test."""
    servers = []

    def make(n: int = 1, **knobs):
        out = []
        for _ in range(n):
            fake = FakeVLLM(**knobs)
            s = LiveServer(fake.app).__enter__()
            servers.append(s)
            out.append((fake, s.url))
        return out
    yield make
    for s in servers:
        s.__exit__(None, None, None)


@pytest.fixture
def make_gateway(gateway_composition, serving_experts, tiny_base_dir, content_embed):
    """make_gateway(urls, max_adapters=4, **serve_settings) -> (app, engine); the app's lifespan runs it."""
    from transformers import AutoTokenizer

    from expertmesh.serving.settings import ServeSettings
    from serving.app import create_app
    from serving.gateway.engine import GatewayComposition, GatewayEngine, GatewayOptions
    from serving.gateway.pool import WorkerPool
    from serving.gateway.router import GatewayRouter

    def make(urls, *, max_adapters: int = 4, timeout_s: float = 30.0, watcher=None, **kw):
        kw.setdefault("max_context", 512)
        settings = ServeSettings(**kw)
        router = GatewayRouter.load(gateway_composition, dict(serving_experts), embed=content_embed)
        comp = GatewayComposition(router, AutoTokenizer.from_pretrained(str(tiny_base_dir)))
        pool = WorkerPool(urls, max_adapters=max_adapters, timeout_s=timeout_s, connect_timeout_s=2.0)
        engine = GatewayEngine(comp, pool, GatewayOptions(max_context=settings.max_context, health_interval_s=0.2))
        return create_app(settings, engine, watcher=watcher), engine
    return make


class LoopThread:
    """An asyncio loop in a thread, for driving a GatewayEngine directly (no HTTP) from a test."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn, *args, timeout: float = 30.0):
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()
