"""Plain HTTP (TestClient): bad input is a 4xx with the one error body; health, readiness, metrics, SSE."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

OK = {"model": "tiny", "prompt": "the patient", "max_tokens": 3, "temperature": 0}


@pytest.fixture
def client(make_app):
    app, engine = make_app(max_body_bytes=64 * 1024)
    with TestClient(app) as c:
        c.engine = engine
        yield c


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and isinstance(err["detail"], dict)
    return err


@pytest.mark.parametrize("change,status,code,field", [
    ({"temperature": -0.5}, 400, "invalid_input", "temperature"),
    ({"temperature": 2.5}, 400, "invalid_input", "temperature"),
    ({"top_p": 0}, 400, "invalid_input", "top_p"),
    ({"top_p": 1.5}, 400, "invalid_input", "top_p"),
    ({"max_tokens": -1}, 400, "invalid_input", "max_tokens"),
    ({"max_tokens": 100000}, 400, "invalid_input", "max_tokens"),
    ({"n": 3}, 400, "unsupported_parameter", "n"),
    ({"logprobs": 21}, 400, "invalid_input", "logprobs"),
    ({"logprobs": -1}, 400, "invalid_input", "logprobs"),
    ({"experts": {"include": ["nobody"]}}, 400, "unknown_expert", "experts.include"),
    ({"exclude_experts": ["law", "ghost"]}, 400, "unknown_expert", "experts.exclude"),
    ({"experts": {"exlude": ["law"]}}, 400, "invalid_input", "experts.exlude"),
    ({"exlude_experts": ["law"]}, 400, "invalid_input", "exlude_experts"),
    ({"prompt": "word " * 600}, 400, "context_length_exceeded", None),
    ({"prompt": [1, 2, 10 ** 7]}, 400, "invalid_input", "prompt"),
    ({"model": "other"}, 404, "model_not_found", "model"),
    ({"prompt": None}, 400, "invalid_input", "prompt"),
])
def test_bad_requests_are_4xx_with_the_error_body(client, change, status, code, field):
    err = assert_error(client.post("/v1/completions", json={**OK, **change}), status, code)
    if field is not None:
        assert err["detail"]["field"] == field


def test_malformed_bodies(client):
    assert_error(client.post("/v1/completions", content=b'{"model": "tiny", "prompt": ',
                             headers={"content-type": "application/json"}), 400, "invalid_input")
    assert_error(client.post("/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}),
                 400, "invalid_input")
    assert_error(client.post("/v1/chat/completions", json={"model": "tiny", "messages": []}), 400, "invalid_input")
    assert_error(client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "tool"}]}),
                 400, "invalid_input")
    assert_error(client.post("/v1/completions", content=b"x" * (70 * 1024),
                             headers={"content-type": "application/json"}), 413, "payload_too_large")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/completions"), 405, "method_not_allowed")
    # and the server still answers
    assert client.post("/v1/completions", json=OK).status_code == 200


def test_excluding_everything_is_answered_by_the_public_base(client):
    r = client.post("/v1/completions", json={**OK, "experts": {"exclude_tags": ["medicine", "law", "code"]},
                                             "return_routing": True})
    routing = r.json()["routing"]
    assert routing["weights"]["public"] == 1.0 and routing["experts"] == [] and routing["candidates"] == []
    assert any("public base" in n for n in routing["notes"])


def test_prompt_lists_token_prompts_and_stop_strings(client):
    r = client.post("/v1/completions", json={**OK, "prompt": ["the patient", "the licensee"],
                                             "return_routing": True}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1] and isinstance(r["routing"], list)
    ids = client.engine.comp.encode("the patient")
    same = client.post("/v1/completions", json={**OK, "prompt": ids}).json()
    assert same["choices"][0]["text"] == r["choices"][0]["text"]
    long = client.post("/v1/completions", json={**OK, "max_tokens": 20, "ignore_eos": True}).json()
    text = long["choices"][0]["text"]
    stop = text[3:5]
    cut = client.post("/v1/completions", json={**OK, "max_tokens": 20, "ignore_eos": True, "stop": [stop]}).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[:text.index(stop)]


def test_sse_stream_format(client):
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
            "stream": True, "return_routing": "tokens", "ignore_eos": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    per_token = chunks[-1]["routing"]["tokens"]
    assert [t["index"] for t in per_token] == [0, 1, 2, 3] and all("epoch" in t for t in per_token)


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/v1/completions", json={**OK, "experts": {"include": ["law"]}})
    client.post("/v1/completions", json={**OK, "temperature": -1})
    text = client.get("/metrics").text
    for needle in ['expertmesh_requests_total{endpoint="/v1/completions",status="200"} 1.0',
                   'expertmesh_requests_total{endpoint="/v1/completions",status="400"} 1.0',
                   "expertmesh_completion_tokens_total 3.0",
                   'expertmesh_request_latency_seconds_count{endpoint="/v1/completions"} 1.0',
                   'expertmesh_expert_requests_total{expert="law"} 1.0',
                   "expertmesh_engine_running_rows", "expertmesh_engine_resident_experts"]:
        assert needle in text, needle
    assert 'expert_requests_total{expert="medicine"}' not in text


def test_not_ready_after_the_engine_stops(make_app):
    app, engine = make_app()
    with TestClient(app) as c:
        engine.stop()
        assert c.get("/readyz").status_code == 503
        assert_error(c.post("/v1/completions", json=OK), 503, "not_ready")


@pytest.mark.parametrize("raw,field", [
    (b'{"model": "tiny", "prompt": "x", "temperature": NaN}', "NaN"),
    (b'{"model": "tiny", "prompt": "x", "temperature": Infinity}', "Infinity"),
    (b'{"model": "tiny", "prompt": "x\\u0000y"}', "$.prompt"),
    (b'{"model": "tiny", "prompt": "\\ud800"}', "$.prompt"),
    (b'{"model": "tiny", "prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "nested deeper"),
], ids=["nan", "infinity", "nul", "lone-surrogate", "deep"])
def test_strict_json_bodies(client, raw, field):
    """Issue 13: NaN, Infinity, NUL, lone surrogates and deep nesting are refused before parsing, naming where."""
    r = client.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert field in assert_error(r, 400, "invalid_input")["message"]
