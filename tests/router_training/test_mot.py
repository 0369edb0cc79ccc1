"""Mixture-of-Thoughts: exact start, training reduces loss, cached generation, opt-out, composition round trip."""
from __future__ import annotations

import pytest
import torch

from expertmesh.errors import ConfigError
from expertmesh.compose.routers.mot.model import MoTConfig, MoTModel, interaction_depths
from expertmesh.compose.routers.mot.artifact import mot_arrays, num_parameters
from router_training.mot_train import MoTTrainConfig, evaluate_mot, train_mot
from router_training.task import pool_blocks
from tests.router_training.conftest import DOMAINS, blocks_of, mean_loss

ARCH = MoTConfig(top_k=2, num_interaction=1, latent_dim=16, num_heads=2, select_tokens=8, selector_hidden=16)


@pytest.fixture()
def mot(runtime):
    torch.manual_seed(0)
    m = MoTModel(runtime.model, ARCH)
    yield m
    m.close()


def test_interaction_depths_are_evenly_spaced():
    assert interaction_depths(30, 3) == [7, 14, 21]
    assert interaction_depths(2, 1) == [0]
    assert interaction_depths(2, 5) == [0, 1]


def test_untrained_mot_with_lora_streams_is_exactly_the_primary_expert(runtime, tiny_corpora):
    mot = MoTModel(runtime.model, MoTConfig(**{**ARCH.to_dict(), "streams": "lora"}))
    ids = blocks_of(runtime, tiny_corpora, "heldout")["law"][:3]
    out = mot(ids)
    fixed = torch.zeros(3, len(DOMAINS) + 1)
    fixed[torch.arange(3), mot.gate_columns(out.experts[:, 0])] = 1.0
    ref = runtime.model(ids, fixed_weights=fixed).logits
    mot.close()
    assert torch.allclose(out.logits, ref, atol=1e-5)
    assert out.weights.shape == (3, 2) and torch.allclose(out.weights.sum(1), torch.ones(3))


def test_untrained_mot_with_gated_streams_is_exactly_the_primary_behind_its_gate(mot, runtime, tiny_corpora):
    # Prepare: rows from every domain, so primaries differ per row
    ids = torch.cat([blocks_of(runtime, tiny_corpora, "heldout")[d][:2] for d in DOMAINS])
    # Execute
    out = mot(ids)
    # Assert: the token gate over {public, primary} (a public primary: the base alone), not the expert ungated
    primary = out.experts[:, 0]
    allowed = torch.zeros(len(ids), len(DOMAINS) + 1, dtype=torch.bool)
    allowed[torch.arange(len(ids)), primary] = True
    assert mot.cfg.streams == "gated" and len(set(primary.tolist())) > 1
    ref = runtime.model(ids, allowed=allowed[:, :len(DOMAINS)]).logits
    assert torch.allclose(out.logits, ref, atol=1e-5)
    ungated = torch.zeros(len(ids), len(DOMAINS) + 1)
    ungated[torch.arange(len(ids)), mot.gate_columns(primary)] = 1.0
    assert not torch.allclose(out.logits, runtime.model(ids, fixed_weights=ungated).logits, atol=1e-3)


def test_mot_training_reduces_heldout_loss_and_trains_only_its_layers(mot, runtime, tiny_corpora):
    # Prepare
    train, held = blocks_of(runtime, tiny_corpora, "train"), blocks_of(runtime, tiny_corpora, "heldout")
    before = {d: evaluate_mot(mot, b)["loss"] for d, b in held.items()}
    base_before = {k: v.clone() for k, v in runtime.base.model.state_dict().items()}
    # Execute
    stats = train_mot(mot, pool_blocks(train.values()), MoTTrainConfig(steps=40, seq_len=32, lr=1e-2))
    after = {d: evaluate_mot(mot, b)["loss"] for d, b in held.items()}
    # Assert
    assert mean_loss(after) < mean_loss(before) - 0.01, (before, after)
    assert stats["tokens"] == 40 * 4 * 32
    assert all(torch.equal(v, runtime.base.model.state_dict()[k]) for k, v in base_before.items())
    assert set(k.split(".")[0] for k in mot_arrays(mot)) == {"selector", "interactions"}
    assert num_parameters(mot) < 10_000


def test_cached_generation_equals_full_recompute_and_left_padding(mot, runtime, tiny_corpora):
    prompt = blocks_of(runtime, tiny_corpora, "heldout")["code"][:2, :10]
    ids, sel = mot.generate(prompt, max_new_tokens=5)
    cur = prompt
    for _ in range(5):
        logits = mot(cur, primary=sel.experts[:, 0]).logits
        cur = torch.cat([cur, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(ids, cur)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    padded, _ = mot.generate(prompt, attention_mask=mask, max_new_tokens=4)
    alone, _ = mot.generate(prompt[1:, 3:], max_new_tokens=4)
    assert torch.equal(padded[1, 10:], alone[0, 7:])


def test_excluded_expert_is_never_selected_or_run(mot, runtime, tiny_corpora):
    ids = blocks_of(runtime, tiny_corpora, "heldout")["law"][:4]
    law = runtime.member_names.index("law")
    allowed = torch.ones(len(DOMAINS), dtype=torch.bool)
    allowed[law] = False
    out = mot(ids, allowed=allowed)
    assert law not in out.experts.flatten().tolist()
    only_public = mot(ids, allowed=torch.zeros(len(DOMAINS), dtype=torch.bool))     # the public candidate remains
    assert only_public.experts.flatten().tolist() == [len(DOMAINS)] * 4
    no_public = MoTModel(runtime.model, MoTConfig(**{**ARCH.to_dict(), "include_public": False}))
    with pytest.raises(ConfigError, match="no expert is allowed"):
        no_public(ids, allowed=torch.zeros(len(DOMAINS), dtype=torch.bool))
    no_public.close()


def test_mot_composition_loads_generates_and_drops_members_exactly(tmp_path, mot, runtime, rt_experts,
                                                                    tiny_base_dir, tiny_corpora):
    # Prepare: a trained MoT stored as a composition of router type "mot"
    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition
    from expertmesh.compose.runtime import CompositionRuntime

    train_mot(mot, pool_blocks(blocks_of(runtime, tiny_corpora, "train").values()),
              MoTTrainConfig(steps=5, seq_len=32, lr=1e-2))
    build_composition("tiny-mot", rt_experts, "mot", base=runtime.base, out=tmp_path / "mot", top_k=2, mot=mot,
                      provenance={"base": str(tiny_base_dir)})
    rt = CompositionRuntime.load(tmp_path / "mot", rt_experts, load_base(str(tiny_base_dir)))
    ids = blocks_of(runtime, tiny_corpora, "heldout")["code"][:2]
    # Execute / Assert: generation with a trace naming the active experts; all-excluded falls back to the base
    gen = rt.generate(["def main(argv): return"], max_new_tokens=4)
    assert sum(gen[0].trace["gate_mass"].values()) == pytest.approx(1.0)
    fb = rt.generate(["def main(argv): return"], max_new_tokens=4, plan=rt.plan(["x"], include=[]))
    assert fb[0].trace["fallback"] and fb[0].trace["gate_mass"]["public"] == 1.0
    # excluding "law" by mask == a composition that never had "law"
    masked = rt.logits(ids, plan=rt.plan(["x"], exclude=["law"]))
    rt.remove_member("law")
    dropped = rt.logits(ids, plan=rt.plan(["x"]))
    assert torch.allclose(masked, dropped, atol=1e-5)
    rt.close()


def test_stored_architecture_round_trips_streams_and_reads_older_mots_as_lora(mot, runtime):
    from expertmesh.compose.routers.mot.router import ARCH_FIELDS, arch_tensor, mot_from_tensors, mot_tensors
    from expertmesh.compose.routers.mot.artifact import mot_config_from_saved

    for streams in ("gated", "lora"):
        cfg = MoTConfig(**{**ARCH.to_dict(), "streams": streams})
        assert mot_config_from_saved(cfg.to_dict()) == cfg
        tensors = {**mot_tensors(mot), "mot.arch": arch_tensor(cfg)}
        rebuilt = mot_from_tensors(runtime.model, tensors)
        assert rebuilt.cfg == cfg
        rebuilt.close()
    # Stored before ``streams`` existed: the arch tensor lacks its field and mot.json lacks its key
    old = {**mot_tensors(mot), "mot.arch": arch_tensor(ARCH)[:ARCH_FIELDS.index("streams")]}
    legacy = mot_from_tensors(runtime.model, old)
    assert legacy.cfg.streams == "lora"
    legacy.close()
    saved = {k: v for k, v in ARCH.to_dict().items() if k != "streams"}
    assert mot_config_from_saved(saved).streams == "lora"
    with pytest.raises(ConfigError, match="streams"):
        MoTConfig(streams="sideways")


@pytest.fixture()
def served_mot(tmp_path, mot, runtime, rt_experts, tiny_base_dir, tiny_corpora):
    """A trained MoT stored as a ``mot`` composition and loaded the way `expertmesh serve` loads it."""
    from expertmesh.base import load_base
    from expertmesh.compose.build import build_composition
    from expertmesh.serving.composition import load_served

    train_mot(mot, pool_blocks(blocks_of(runtime, tiny_corpora, "train").values()),
              MoTTrainConfig(steps=5, seq_len=32, lr=1e-2))
    build_composition("tiny-mot", rt_experts, "mot", base=runtime.base, out=tmp_path / "mot", top_k=2, mot=mot,
                      provenance={"base": str(tiny_base_dir)})
    comp = load_served(tmp_path / "mot", rt_experts, load_base(str(tiny_base_dir)))
    yield comp
    comp.close()


def test_mot_batch_rows_of_any_mask_and_length_equal_each_row_alone(served_mot):
    from expertmesh.compose.routers.mot.batch import MoTBatch

    model, pad = served_mot.model, served_mot.tokenizer.pad_token_id or 0
    assert served_mot.batch_class is MoTBatch
    seqs = [served_mot.encode(p) for p in ("def main(argv): return", "the court held", "the patient was given")]
    mask = torch.tensor([[True, True, True], [False, True, False], [False, False, False]])
    batch, logits, trace = MoTBatch.prefill(model, seqs, mask, pad)
    alone = [MoTBatch.prefill(model, [s], mask[i:i + 1], pad) for i, s in enumerate(seqs)]
    for step in range(3):
        for i, (_, single, _) in enumerate(alone):
            torch.testing.assert_close(logits[i], single[0], atol=1e-4, rtol=1e-4)
        tokens = logits.argmax(-1).tolist()
        logits, trace = batch.decode(model, tokens, mask)
        alone = [(b, b.decode(model, [tokens[i]], mask[i:i + 1])[0], None) for i, (b, _, _) in enumerate(alone)]
    assert trace.row(2)["public"] == 1.0                          # nothing allowed: the public base answers
    assert trace.row(1)["law"] > 0 and trace.row(1)["code"] == 0 == trace.row(1)["medicine"]
    batch.select([2, 0])
    assert batch.size == 2 and batch.seqs[0][:len(seqs[2])] == seqs[2]


def test_serve_engine_runs_a_mot_composition_with_opt_outs(served_mot, tiny_base_dir):
    from expertmesh.base import load_base
    from expertmesh.compose.runtime import CompositionRuntime
    from expertmesh.serving.composition import Selection
    from expertmesh.serving.engine import Engine
    from expertmesh.serving.requests import SyncSink
    from expertmesh.serving.settings import ServeSettings
    from tests.serving.conftest import collect, submit

    prompt = "def main(argv): return"
    ids = torch.tensor([served_mot.encode(prompt)])
    # The reference: the same composition loaded with its weights (serving loads signatures only and lets the
    # engine's resident set bring the weights in), generating one request at a time.
    eager = CompositionRuntime.load(served_mot.info["source"], served_mot.expert_dirs, load_base(str(tiny_base_dir)))
    alone = eager.model.generate(ids, max_new_tokens=6)[0, ids.shape[1]:].tolist()
    eager.close()
    engine = Engine(served_mot, ServeSettings(max_context=256, batch_wait_ms=50)).start()
    try:
        sinks = [SyncSink() for _ in range(3)]
        for sink, sel in zip(sinks, (Selection(), Selection(include=["law"]), Selection(include=[]))):
            submit(engine, prompt, sink, max_tokens=6, selection=sel)
        (text_all, done_all), (text_law, done_law), (text_none, done_none) = [collect(s) for s in sinks]
        withdrawn = done_all["routing"]["experts"][0]
        engine.apply_withdrawn({withdrawn})                        # its owner withdraws the primary's expert
        assert engine.wait_idle() and engine.withdrawn == {withdrawn}
        after = SyncSink()
        submit(engine, prompt, after, max_tokens=3)
        _, done_after = collect(after)
    finally:
        engine.stop()
    # the same greedy tokens as the runtime's own MoT generation, one request at a time
    assert text_all == served_mot.decode(alone)
    assert done_all["usage"]["completion_tokens"] == 6 and done_all["max_batch"] >= 2
    weights = done_all["routing"]["weights"]                  # the selector's weights over the active streams
    assert sum(weights.values()) == pytest.approx(1.0) and done_all["routing"]["experts"]
    assert done_law["routing"]["weights"]["code"] == 0 == done_law["routing"]["weights"]["medicine"]
    assert done_law["routing"]["weights"]["law"] > 0
    assert done_none["routing"]["weights"]["public"] == pytest.approx(1.0) and text_none
    assert done_after["routing"]["weights"][withdrawn] == 0 and withdrawn not in done_after["routing"]["experts"]
