"""Live opt-out: a withdrawal reaches requests already in flight within the documented 2 s, and no token
computed after the switch uses the withdrawn expert (checked on the per-token routing trace)."""
from __future__ import annotations

import threading
import time

import openai
import pytest
from fastapi.testclient import TestClient

from expertmesh.errors import RemoteError
from expertmesh.serving.composition import Selection
from expertmesh.serving.requests import SyncSink
from expertmesh.serving.watcher import RegistrySnapshot, Watcher
from tests.serving.conftest import LiveServer, collect, make_package, run_sync, submit

BOUND_S = 2.0


class FakeSource:
    """Stands in for the registry's revision endpoint (same RevisionSource interface)."""

    def __init__(self):
        self.rev, self.withdrawn, self.down = 1, frozenset(), False

    def poll(self, etag):
        if self.down:
            raise RemoteError("registry unreachable")
        tag = f'"{self.rev}"'
        return None if etag == tag else RegistrySnapshot(etag=tag, withdrawn=self.withdrawn, revision=self.rev)

    def set_withdrawn(self, names):
        self.withdrawn, self.rev = frozenset(names), self.rev + 1


def _slow(engine, seconds=0.004):
    engine.on_step = lambda info: time.sleep(seconds)     # keep requests in flight long enough to switch


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def _check_trace(tokens: list[dict], expert: str, switch_epoch: int) -> tuple[int, int]:
    """(tokens before the switch that used ``expert``, tokens after the switch); asserts none after used it."""
    before = sum(1 for t in tokens if t["epoch"] < switch_epoch and t["weights"].get(expert, 0) > 0)
    after = [t for t in tokens if t["epoch"] >= switch_epoch]
    assert all(expert not in t["weights"] for t in after), [t for t in after if expert in t["weights"]][:3]
    return before, len(after)


def test_withdrawal_reaches_requests_in_flight(make_engine):
    # Prepare: three long requests; two may use law, one excluded it
    engine = make_engine(max_batch=8)
    _slow(engine)
    source = FakeSource()
    watcher = Watcher(source, engine, interval_s=0.1).start()
    sinks = [SyncSink() for _ in range(3)]
    sels = [Selection(include=["law", "medicine"]), Selection(), Selection(exclude=["law"])]
    counts = [0, 0, 0]
    for i, (sink, sel) in enumerate(zip(sinks, sels)):
        def counting(ev, i=i, sink=sink):
            counts[i] += ev.kind == "delta"
            sink(ev)
        submit(engine, "the licensee shall not", counting, max_tokens=150, selection=sel, trace_tokens=True,
               ignore_eos=True)
    assert _wait(lambda: min(counts) >= 10)
    # Execute: the owner withdraws law while the rows are generating
    t0 = time.monotonic()
    source.set_withdrawn({"law"})
    assert _wait(lambda: "law" in engine.withdrawn, BOUND_S)
    applied = engine.withdrawal_log[-1]
    results = [collect(s) for s in sinks]
    watcher.stop()
    # Assert: within the bound; in-flight tokens after the switch never touched law
    assert applied["applied_at"] - t0 < BOUND_S
    for i, (_, done) in enumerate(results):
        before, after = _check_trace(done["routing"]["tokens"], "law", applied["epoch"])
        assert after > 0, "the request finished before the switch: the test proves nothing"
        if i == 0:
            assert before > 0
            assert any("withdrawn" in n for n in done["routing"]["notes"])
    assert engine.stats()["counters"]["recomputed_rows"] == 2       # the law-free row kept its cache
    assert "law" not in engine.resident.resident
    _, later = run_sync(engine, "the licensee", selection=Selection(include=["law", "code"]))
    assert later["routing"]["weights"]["law"] == 0.0
    assert any("law is withdrawn" in n for n in later["routing"]["notes"])


def test_unreachable_registry_fails_closed_then_recovers(make_app):
    source = FakeSource()
    app, engine = make_app()
    watcher = Watcher(source, engine, interval_s=0.05, stale_after_s=0.3)
    body = {"model": "tiny", "prompt": "the patient", "max_tokens": 3, "temperature": 0, "return_routing": True}
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.watcher = watcher
        watcher.start()
        assert _wait(lambda: c.get("/readyz").status_code == 200)
        source.down = True
        assert _wait(lambda: engine.stats()["fail_closed"], 5)
        assert c.get("/readyz").status_code == 503
        routing = c.post("/v1/completions", json=body).json()["routing"]
        assert routing["weights"]["public"] == 1.0 and any("unreachable" in n for n in routing["notes"])
        source.down = False
        assert _wait(lambda: not engine.stats()["fail_closed"], 5)
        routing = c.post("/v1/completions", json=body).json()["routing"]
        assert routing["experts"]
        watcher.stop()


# -- through a real registry ----------------------------------------------------------------------------------
ADMIN = "admin-token-for-serving-tests-0123456789"


@pytest.fixture
def registry(tmp_path):
    from clients.registry_client import RegistryClient
    from registry.app import create_app
    from registry.settings import RegistrySettings

    app = create_app(RegistrySettings(data_dir=tmp_path / "registry", admin_token=ADMIN))
    with LiveServer(app) as server:
        admin = RegistryClient(server.url, ADMIN)
        admin.create_owner("acme")
        owner = RegistryClient(server.url, admin.create_token("acme", ["publish", "coordinate", "read"]).token)
        reader = admin.create_token("acme", ["read"]).token
        yield server.url, owner, reader
        owner.close()
        admin.close()


def _publish_composition(owner, name, dirs, versions, out):
    from expertmesh.compose import build_composition

    build_composition(name, dirs, "domain", out=out, top_k=2, versions=versions)
    return owner.publish_composition(out)


def test_withdrawal_and_new_version_through_the_registry(registry, serving_experts, tiny_base_dir, tmp_path):
    from clients.registry_client import RegistryClient
    from expertmesh.base import load_base
    from serving.app import create_app
    from serving.launch import build_server
    from expertmesh.serving.settings import ServeSettings

    url, owner, reader = registry
    versions = {n: owner.publish(d).version for n, d in serving_experts.items()}
    _publish_composition(owner, "clinic", serving_experts, versions, tmp_path / "c1")
    base = load_base(str(tiny_base_dir))
    settings = ServeSettings(composition="clinic", registry_url=url, registry_token=reader, poll_interval_s=0.2,
                             max_context=512, max_tokens_limit=400)
    engine, watcher = build_server(settings, cache_dir=tmp_path / "cache", base=base,
                                   client=RegistryClient(url, reader))
    _slow(engine)
    with LiveServer(create_app(settings, engine, watcher=watcher)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        got: dict = {"n": 0}

        def stream():
            chunks = client.chat.completions.create(
                model="clinic", messages=[{"role": "user", "content": "may I sublicense it?"}], max_tokens=200,
                temperature=0, stream=True,
                extra_body={"experts": {"include": ["law", "medicine"]}, "return_routing": "tokens",
                            "ignore_eos": True})
            for c in chunks:
                got["n"] += 1
                if (c.model_extra or {}).get("routing"):
                    got["routing"] = c.model_extra["routing"]

        t = threading.Thread(target=stream)
        t.start()
        assert _wait(lambda: got["n"] >= 15)
        # Execute: the owner withdraws law in the registry while the request streams
        owner.withdraw("law", reason="consent revoked")
        t_commit = time.monotonic()
        assert _wait(lambda: "law" in engine.withdrawn, BOUND_S + 1)
        t.join(60)
        applied = engine.withdrawal_log[-1]
        print(f"withdrawal applied {applied['applied_at'] - t_commit:.3f} s after the registry commit "
              f"({applied['seen_to_applied_s']:.3f} s after the watcher saw it)")
        assert applied["applied_at"] - t_commit < BOUND_S
        before, after = _check_trace(got["routing"]["tokens"], "law", applied["epoch"])
        assert before > 0 and after > 0
        card = client.models.retrieve("clinic").model_extra["composition"]
        assert {e["name"]: e["status"] for e in card["experts"]}["law"] == "withdrawn"

        # restore: law serves again, without a restart
        owner.restore("law", reason="consent given again")
        assert _wait(lambda: "law" not in engine.withdrawn, BOUND_S + 1)
        resp = client.completions.create(model="clinic", prompt="the licensee", max_tokens=3,
                                         extra_body={"include_experts": ["law"], "return_routing": True})
        assert resp.model_extra["routing"]["weights"]["law"] > 0

        # a new composition version with a new member appears live
        from expertmesh.base import load_base as lb

        new = make_package(tmp_path / "finance", "finance", lb(str(tiny_base_dir)), ["q_proj"], 4, ["finance"], 9)
        versions["finance"] = owner.publish(new).version
        _publish_composition(owner, "clinic", {**serving_experts, "finance": new}, versions, tmp_path / "c2")
        assert _wait(lambda: engine.comp.version == "2", 10)
        names = [e["name"] for e in client.models.retrieve("clinic").model_extra["composition"]["experts"]]
        assert "finance" in names
        resp = client.completions.create(model="clinic", prompt="the rate", max_tokens=3,
                                         extra_body={"include_experts": ["finance"], "return_routing": True})
        assert resp.model_extra["routing"]["weights"]["finance"] > 0
