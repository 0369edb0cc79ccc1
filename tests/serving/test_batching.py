"""Continuous batching with per-row expert masks: a mixed batch computes what each request computes alone."""
from __future__ import annotations

import threading

import torch

from expertmesh.serving.composition import Selection
from expertmesh.serving.kvbatch import KVBatch
from expertmesh.serving.requests import SyncSink
from tests.serving.conftest import collect, run_sync, submit

PROMPTS = ["the patient was given aspirin", "the licensee shall not", "def main(argv):", "to be or not"]


def _mask(comp, allowed_rows):
    return torch.tensor([[n in row for n in comp.members] for row in allowed_rows], dtype=torch.bool)


def test_mixed_opt_outs_in_one_forward_give_the_same_logits_as_each_alone(make_comp):
    # Prepare: four requests with four different expert masks, one of them public-only
    comp = make_comp()
    model, pad = comp.model, comp.tokenizer.pad_token_id
    seqs = [comp.encode(p) for p in PROMPTS]
    rows = [{"medicine", "law", "code"}, {"medicine", "code"}, set(), {"law"}]
    mask = _mask(comp, rows)
    # Execute: one batched prefill + 4 decode steps vs the same rows one at a time
    batch, logits, trace = KVBatch.prefill(model, seqs, mask, pad)
    alone = [KVBatch.prefill(model, [s], mask[i:i + 1], pad) for i, s in enumerate(seqs)]
    steps = [(logits, [a[1][0] for a in alone])]
    tokens = logits.argmax(-1).tolist()
    for _ in range(4):
        logits, trace = batch.decode(model, tokens, mask)
        singles = [alone[i][0].decode(model, [tokens[i]], mask[i:i + 1])[0][0] for i in range(len(seqs))]
        steps.append((logits, singles))
        tokens = logits.argmax(-1).tolist()
    # Assert: same logits row by row, and the trace of each row only holds its own experts
    for batched, singles in steps:
        for i, single in enumerate(singles):
            torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=1e-5)
    for b, allowed in enumerate(rows):
        used = {n for n, m in trace.row(b).items() if m > 0 and n != "public"}
        assert used <= allowed
    assert trace.row(2) == {"public": 1.0, "medicine": 0.0, "law": 0.0, "code": 0.0}


def test_rows_joining_and_leaving_mid_generation_keep_their_logits(make_comp):
    comp = make_comp()
    model, pad = comp.model, comp.tokenizer.pad_token_id
    a, b = comp.encode(PROMPTS[0]), comp.encode(PROMPTS[2]) + comp.encode(PROMPTS[3])
    ma, mb = _mask(comp, [{"law", "code"}]), _mask(comp, [{"medicine"}])
    batch, la, _ = KVBatch.prefill(model, [a], ma, pad)
    a = a + [int(la.argmax())]
    la, _ = batch.decode(model, [a[-1]], ma)                 # a runs alone for a step
    a = a + [int(la.argmax())]
    joiner, lb, _ = KVBatch.prefill(model, [b], mb, pad)      # b joins (longer history than a)
    batch.merge(joiner)
    b = b + [int(lb.argmax())]
    both, _ = batch.decode(model, [a[-1], b[-1]], torch.cat([ma, mb]))
    batch.select([1])                                        # a leaves
    b2 = b + [int(both[1].argmax())]
    after, _ = batch.decode(model, [b2[-1]], mb)
    # reference: each history recomputed from scratch
    torch.testing.assert_close(both[0], KVBatch.prefill(model, [a], ma, pad)[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], KVBatch.prefill(model, [b], mb, pad)[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[0], KVBatch.prefill(model, [b2], mb, pad)[1][0], atol=1e-5, rtol=1e-5)
    assert batch.length == len(b2)                           # padding of the departed row was trimmed


def test_concurrent_requests_share_forwards_and_match_solo_runs(make_engine):
    # Prepare: the same four requests served one at a time (max_batch=1) and all at once
    sels = [Selection(), Selection(exclude=["law"]), Selection(include=[]), Selection(tags=["code"])]
    solo_engine = make_engine(max_batch=1)
    solo = [run_sync(solo_engine, p, max_tokens=6 + i, selection=s, ignore_eos=True)
            for i, (p, s) in enumerate(zip(PROMPTS, sels))]
    engine = make_engine(max_batch=8, batch_wait_ms=50)
    # Execute
    sinks = [SyncSink() for _ in PROMPTS]
    for i, (p, s, sink) in enumerate(zip(PROMPTS, sels, sinks)):
        submit(engine, p, sink, max_tokens=6 + i, selection=s, ignore_eos=True)
    together = [collect(s) for s in sinks]
    # Assert: identical text and routing, and the rows really shared forwards
    for (t1, d1), (t2, d2) in zip(solo, together):
        assert t1 == t2
        assert d1["routing"]["experts"] == d2["routing"]["experts"]
        for name, w in d1["routing"]["weights"].items():
            assert abs(w - d2["routing"]["weights"][name]) < 1e-4
    assert max(d["max_batch"] for _, d in together) == 4
    stats = engine.stats()["counters"]
    assert stats["prefills"] == 1                            # one prefill for the burst
    assert stats["decode_steps"] < sum(6 + i for i in range(4)) - 1
    assert together[2][1]["routing"]["weights"]["public"] == 1.0
    assert any("public base" in n for n in together[2][1]["routing"]["notes"])


def test_seeded_sampling_does_not_depend_on_batch_partners(make_engine):
    engine = make_engine(max_batch=8, batch_wait_ms=20)
    alone = run_sync(engine, PROMPTS[0], max_tokens=10, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)[0]
    sinks = [SyncSink() for _ in range(3)]
    for i, sink in enumerate(sinks):
        submit(engine, PROMPTS[0] if i == 1 else PROMPTS[i], sink, max_tokens=10, temperature=0.9, top_p=0.9,
               seed=7 if i == 1 else i + 100, ignore_eos=True)
    results = [collect(s)[0] for s in sinks]
    assert results[1] == alone


def test_the_worker_survives_a_failing_forward(make_engine, monkeypatch):
    engine = make_engine()
    calls = {"n": 0}
    real = KVBatch.decode

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real(self, *a, **kw)

    monkeypatch.setattr(KVBatch, "decode", flaky)
    try:
        run_sync(engine, PROMPTS[0], max_tokens=5, ignore_eos=True)
        raise AssertionError("the injected fault should fail the request")
    except Exception as e:
        assert getattr(e, "code", "") == "internal_error"
    text, done = run_sync(engine, PROMPTS[0], max_tokens=5, ignore_eos=True)
    assert done["usage"]["completion_tokens"] == 5 and engine.ready
    assert engine.stats()["counters"]["engine_errors"] == 1


def test_cancelled_request_leaves_the_batch(make_engine):
    engine = make_engine(max_batch=4)
    seen = threading.Event()
    handle_box = {}

    def sink(ev):
        if ev.kind == "delta":
            seen.set()
    handle_box["h"] = submit(engine, PROMPTS[0], sink, max_tokens=300, ignore_eos=True)
    assert seen.wait(30)
    handle_box["h"].cancel()
    assert engine.wait_idle(10)
    assert engine.stats()["counters"]["cancelled"] == 1


def test_a_failing_prefill_fails_only_its_requests(make_engine, monkeypatch):
    engine = make_engine()
    real = KVBatch.prefill.__func__
    calls = {"n": 0}

    def flaky(cls, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real(cls, *a, **kw)

    monkeypatch.setattr(KVBatch, "prefill", classmethod(flaky))
    try:
        run_sync(engine, PROMPTS[1], max_tokens=3)
        raise AssertionError("the injected fault should fail the request")
    except Exception as e:
        assert getattr(e, "code", "") == "internal_error"
    assert run_sync(engine, PROMPTS[1], max_tokens=3)[1]["usage"]["completion_tokens"] == 3
