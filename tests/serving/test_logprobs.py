"""Log-probabilities on /v1/completions (echo, logprobs, max_tokens=0) and chat (logprobs, top_logprobs): the
numbers are the composition's own, with the request's opt-outs, in OpenAI's format; streams carry the same."""
from __future__ import annotations

import json
import math

import pytest
import torch
from fastapi.testclient import TestClient

PROMPT = "the patient was given aspirin for chest pain"


@pytest.fixture
def client(make_app):
    app, engine = make_app(max_batch=8)
    with TestClient(app) as c:
        yield c, engine


def _direct_logprobs(engine, ids: list[int], exclude: list[str]) -> list[float]:
    """log p(token t | tokens < t) from one plain forward of the composition with ``exclude`` masked out."""
    model = engine.comp.model
    assert engine.wait_idle(30)
    with torch.no_grad():
        logits = model(torch.tensor([ids]), allowed=model.mask_for(exclude=exclude)).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


@pytest.mark.parametrize("exclude", [[], ["law", "medicine"]])
def test_echo_scores_the_prompt_through_the_composition_with_opt_outs(client, exclude):
    c, engine = client
    r = c.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 3,
                                        "max_tokens": 0, "temperature": 0, "exclude_experts": exclude})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    ids = engine.comp.encode(PROMPT)

    assert choice["text"] == PROMPT and r.json()["usage"]["completion_tokens"] == 0
    assert len(lp["tokens"]) == len(ids) and "".join(lp["tokens"]) == PROMPT
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(_direct_logprobs(engine, ids, exclude), abs=1e-4)
    assert [PROMPT[o:o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"])] == lp["tokens"]
    for tok_lp, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert len(top) <= 3 and max(top.values()) >= tok_lp - 1e-6 and all(v <= 0 for v in top.values())


def test_opting_out_changes_the_scores(client):
    c, _ = client
    body = {"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 0, "max_tokens": 0}
    full = c.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
    base = c.post("/v1/completions", json={**body, "experts": {"include": []}}).json()
    assert base["choices"][0]["logprobs"]["token_logprobs"] != full


def test_generated_token_logprobs_match_greedy_choices(client):
    c, _ = client
    r = c.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
                                        "logprobs": 2, "ignore_eos": True, "echo": True}).json()
    choice, usage = r["choices"][0], r["usage"]
    lp = choice["logprobs"]
    n_prompt = usage["prompt_tokens"]
    assert len(lp["tokens"]) == n_prompt + usage["completion_tokens"]
    assert choice["text"].startswith(PROMPT)
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][-1] <= len(choice["text"])
    for tok_lp, top in zip(lp["token_logprobs"][n_prompt:], lp["top_logprobs"][n_prompt:]):
        assert tok_lp == max(top.values())         # greedy: the chosen token is the most likely (lm-eval's test)
    assert lp["text_offset"][n_prompt] == len(PROMPT)
    assert all(math.isfinite(x) for x in lp["token_logprobs"][1:])


def test_streamed_logprobs_equal_the_full_response(client):
    c, _ = client
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 1,
            "ignore_eos": True, "echo": True}
    full = c.post("/v1/completions", json=body).json()["choices"][0]
    chunks = []
    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    streamed = [x for ch in chunks if ch["choices"] and ch["choices"][0]["logprobs"]
                for x in ch["choices"][0]["logprobs"]["token_logprobs"]]
    offsets = [x for ch in chunks if ch["choices"] and ch["choices"][0]["logprobs"]
               for x in ch["choices"][0]["logprobs"]["text_offset"]]
    assert text == full["text"]
    assert streamed[0] is None and streamed[1:] == pytest.approx(full["logprobs"]["token_logprobs"][1:], abs=1e-6)
    assert offsets == full["logprobs"]["text_offset"]


def test_chat_logprobs_and_top_logprobs(client):
    c, _ = client
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5,
            "temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": 2}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == r.json()["usage"]["completion_tokens"] == 5
    for e in content:
        assert len(e["top_logprobs"]) == 2 and e["logprob"] == e["top_logprobs"][0]["logprob"]
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
    plain = c.post("/v1/chat/completions", json={**body, "logprobs": None, "top_logprobs": None}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_top_logprobs_without_logprobs_is_refused(client):
    c, _ = client
    r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                             "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["detail"]["field"] == "top_logprobs"


def test_streaming_never_splits_a_multibyte_character(tiny_base):
    """Byte-level BPE splits these characters into several tokens; no delta may carry half of one."""
    from expertmesh.serving.sampling import TextStream

    text = "café 中文 ok 🙂 naïve — end"
    tok = tiny_base.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)          # the test means something: some tokens are partial bytes
    stream = TextStream(tok, stop=[])
    deltas = [stream.push(i)[0] for i in ids] + [stream.finish()]
    assert all("\ufffd" not in d for d in deltas) and "".join(deltas) == text


def test_streamed_chat_text_equals_the_full_reply(client):
    """Sampled text from the random tiny model (which emits stray bytes): the stream adds no U+FFFD of its own."""
    c, _ = client
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 40,
            "temperature": 1.0, "seed": 3, "ignore_eos": True}
    full = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    parts = []
    with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])
                if ch["choices"]:
                    parts.append(ch["choices"][0]["delta"].get("content") or "")
    assert "".join(parts) == full and len(parts) > 1


def test_one_logprob_entry_per_completion_token_even_at_eos(client):
    """lm-eval reads token_logprobs[ctxlen:-1] of an echo + max_tokens=1 answer: there must be exactly one entry
    per prompt token plus one per completion token, whatever the completion token is (EOS included)."""
    c, engine = client
    eos = engine.comp.tokenizer.eos_token_id
    for prompt in (PROMPT, [eos, eos]):
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "echo": True, "logprobs": 1,
                                            "max_tokens": 1, "temperature": 0}).json()
        usage = r["usage"]
        assert len(r["choices"][0]["logprobs"]["token_logprobs"]) == usage["prompt_tokens"] + usage["completion_tokens"]
