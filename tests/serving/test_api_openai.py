"""The official openai client, unchanged, against a real uvicorn server on a loopback port."""
from __future__ import annotations

import openai
import pytest

from tests.serving.conftest import LiveServer


@pytest.fixture
def live(make_app):
    app, engine = make_app(max_batch=8)
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        yield client, engine


def _routing(obj) -> dict:
    extra = obj.model_extra or {}
    return extra["routing"]


def test_models_list_shows_the_composition(live):
    client, _ = live
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    experts = models[0].model_extra["composition"]["experts"]
    assert [e["name"] for e in experts] == ["medicine", "law", "code"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_completion_with_opt_out_and_routing(live):
    client, _ = live
    resp = client.completions.create(model="tiny", prompt="the patient was given", max_tokens=6, temperature=0,
                                     extra_body={"experts": {"exclude": ["law"]}, "return_routing": True,
                                                 "ignore_eos": True})
    assert resp.object == "text_completion" and resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 6
    routing = _routing(resp)
    assert routing["weights"]["law"] == 0.0 and "law" not in routing["experts"]
    assert set(routing["candidates"]) == {"medicine", "code"}


def test_streamed_completion_equals_the_plain_one(live):
    client, _ = live
    kw = dict(model="tiny", prompt="def main(argv):", max_tokens=12, temperature=0,
              extra_body={"include_experts": ["code"], "ignore_eos": True})
    plain = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_plain_and_streamed_with_usage(live):
    client, _ = live
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is aspirin?"}]
    kw = dict(model="tiny", messages=msgs, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**kw)
    assert plain.choices[0].message.role == "assistant" and plain.object == "chat.completion"
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].choices == []


def test_streamed_chat_carries_routing_in_the_last_choice_chunk(live):
    client, _ = live
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, stream=True,
        extra_body={"experts": {"include": []}, "return_routing": True}))
    routing = [c.model_extra["routing"] for c in chunks if (c.model_extra or {}).get("routing")]
    assert len(routing) == 1
    assert routing[0]["weights"]["public"] == 1.0 and routing[0]["experts"] == []
    assert any("public base" in n for n in routing[0]["notes"])


def test_errors_reach_the_client_as_openai_errors(live):
    client, _ = live
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", extra_body={"experts": {"include": ["nobody"]}})
    assert e.value.body["code"] == "unknown_expert"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], temperature=-1)
    assert e.value.body["code"] == "invalid_input" and "temperature" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", n=2)
    assert e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x " * 600, max_tokens=5, stream=True)
    assert e.value.body["code"] == "context_length_exceeded"


def test_api_key_guards_v1_and_leaves_probes_open(make_app):
    import httpx

    from expertmesh.errors import ConfigError
    from expertmesh.serving.settings import ServeSettings

    app, _ = make_app(api_key="s3cret-key-1")
    with LiveServer(app) as server:
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret-key-1", max_retries=0, timeout=60)
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key-00", max_retries=0, timeout=60)
        out = good.completions.create(model="tiny", prompt="the court", max_tokens=2)
        assert out.usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.body["code"] == "unauthenticated"
        bare = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert ServeSettings(api_key="s3cret-key-1").describe()["api_key"] == "set"
    with pytest.raises(ConfigError, match="api_key"):
        ServeSettings(api_key="short")
