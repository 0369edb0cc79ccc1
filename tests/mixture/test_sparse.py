"""Selected-only LoRA deltas (sparse.py) against the token loop and the dense stacked formula; the narrowed
token gate against the full one; opt-out exactness through the sparse path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from expertmesh.mixture.gate import gate_weights
from expertmesh.mixture.layers import MixtureLinear
from expertmesh.mixture.lora_io import ExpertWeights
from expertmesh.mixture.model import ComposedModel, RouterState
from expertmesh.mixture.sparse import pools_from_factors, selected_delta, selected_delta_reference


def _factors(k: int, r: int, d_in: int, d_out: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # expert 1 has a lower rank, expert 2 does not adapt this module: both are padded with exact zeros
    out = []
    for j in range(k):
        if j == 2:
            out.append(None)
            continue
        rj = r - 2 if j == 1 else r
        out.append((torch.randn(rj, d_in, generator=g), torch.randn(d_out, rj, generator=g), 0.5 + j))
    return out


def _topk_weights(m: int, k: int, top: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, k, generator=g)
    keep = logits.topk(top, -1).indices
    return torch.zeros(m, k).scatter(-1, keep, torch.rand(m, top, generator=g))


@pytest.mark.parametrize("strategy", ["gather", "segment", "padded", "auto"])
def test_selected_delta_matches_token_loop_and_dense_formula(strategy):
    # Prepare
    k, r, d_in, d_out, m = 6, 4, 12, 10, 40
    factors = _factors(k, r, d_in, d_out)
    a_pool, b_pool = pools_from_factors(factors, d_in, d_out)
    x, w = torch.randn(m, d_in), _topk_weights(m, k, 2)
    layer = MixtureLinear(nn.Linear(d_in, d_out), 0, state=None)
    layer.set_factors(factors)
    # Execute
    fast = selected_delta(x, w, a_pool, b_pool, strategy=strategy)
    slow = selected_delta_reference(x, w, a_pool, b_pool)
    dense = layer.dense_delta(x, w)
    # Assert
    assert torch.allclose(fast, slow, atol=1e-4)
    assert torch.allclose(fast, dense, atol=1e-4)


def _skewed_weights(m: int, k: int, seed: int = 2) -> torch.Tensor:
    """Token counts per slot far from even: slot 0 gets ~3/4 of the tokens, slot 3 one token, slots 4 and 5 none;
    one token has a single selected expert and one token none (a row of zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(m, k)
    first = torch.where(torch.rand(m, generator=g) < 0.75, 0, 1)
    w[torch.arange(m), first] = torch.rand(m, generator=g) + 0.1
    w[torch.arange(m), torch.where(first == 0, 2, 0)] = torch.rand(m, generator=g) + 0.1
    w[5] = 0.0
    w[5, 3] = 0.7                                 # slot 3's only token, and its only expert
    w[6] = 0.0                                    # a token with no expert at all
    assert (w[:, 4:] == 0).all() and (w != 0).sum(0)[0] > m // 2
    return w


@pytest.mark.parametrize("strategy", ["gather", "segment", "padded", "auto"])
@pytest.mark.parametrize("case", ["skewed", "one_expert", "one_token"])
def test_selected_delta_on_skewed_counts_empty_slots_and_one_expert(strategy, case):
    # Prepare: 6 slots (slot 2 holds no factors for this module), counts from 1 to ~3/4 of the tokens
    k, r, d_in, d_out, m = 6, 4, 12, 10, 37
    factors = _factors(k, r, d_in, d_out, seed=4)
    a_pool, b_pool = pools_from_factors(factors, d_in, d_out)
    x = torch.randn(m, d_in, generator=torch.Generator().manual_seed(5))
    w = _skewed_weights(m, k)
    if case == "one_expert":                      # every token on the same expert, the others empty
        w = torch.zeros(m, k)
        w[:, 1] = torch.linspace(0.1, 1.0, m)
    elif case == "one_token":
        x, w = x[:1], w[:1]
    layer = MixtureLinear(nn.Linear(d_in, d_out), 0, state=None)
    layer.set_factors(factors)
    # Execute
    fast = selected_delta(x, w, a_pool, b_pool, strategy=strategy)
    # Assert
    assert fast.shape == (x.shape[0], d_out) and fast.dtype == torch.float32
    assert torch.allclose(fast, selected_delta_reference(x, w, a_pool, b_pool), atol=1e-4)
    assert torch.allclose(fast, layer.dense_delta(x, w), atol=1e-4)
    assert torch.equal(fast[(w == 0).all(1)], torch.zeros(int((w == 0).all(1).sum()), d_out))


@pytest.mark.parametrize("strategy", ["gather", "segment", "padded", "auto"])
def test_selected_delta_under_bf16_autocast_returns_bf16_close_to_the_reference(strategy):
    # Prepare
    k, r, d_in, d_out, m = 6, 4, 12, 10, 40
    a_pool, b_pool = pools_from_factors(_factors(k, r, d_in, d_out, seed=6), d_in, d_out)
    x, w = torch.randn(m, d_in), _skewed_weights(m, k, seed=7)
    slow = selected_delta_reference(x, w, a_pool, b_pool)
    # Execute
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = selected_delta(x, w, a_pool, b_pool, strategy=strategy)
    # Assert: bf16 keeps 8 bits of mantissa, so compare relative to the output's scale
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - slow).abs().max() <= 0.02 * slow.abs().max()


def test_padded_equals_segment_at_serving_shapes():
    # Prepare: 64 resident experts, 2 of them per token, 16 rows x 8 tokens; rank 8, 48 -> 24 features
    g = torch.Generator().manual_seed(8)
    k, r, d_in, d_out, m = 64, 8, 48, 24, 128
    a_pool, b_pool = torch.randn(k, r, d_in, generator=g), torch.randn(k, d_out, r, generator=g)
    x = torch.randn(m, d_in, generator=g)
    w = _topk_weights(m, k, 2, seed=9)
    # Execute
    padded = selected_delta(x, w, a_pool, b_pool, strategy="padded")
    segment = selected_delta(x, w, a_pool, b_pool, strategy="segment")
    gather = selected_delta(x, w, a_pool, b_pool, strategy="gather")
    # Assert
    assert torch.allclose(padded, segment, atol=1e-4) and torch.allclose(padded, gather, atol=1e-4)
    assert torch.allclose(padded, selected_delta_reference(x, w, a_pool, b_pool), atol=1e-3)


def test_no_selected_pair_gives_exact_zeros():
    a_pool, b_pool = pools_from_factors(_factors(3, 2, 5, 4), 5, 4)
    assert torch.equal(selected_delta(torch.randn(7, 5), torch.zeros(7, 3), a_pool, b_pool), torch.zeros(7, 4))


def test_unknown_strategy_is_refused():
    a_pool, b_pool = pools_from_factors(_factors(3, 2, 5, 4), 5, 4)
    with pytest.raises(ValueError, match="strategy"):
        selected_delta(torch.randn(2, 5), _topk_weights(2, 3, 1), a_pool, b_pool, strategy="fast")


def test_narrowed_gate_equals_full_gate_with_the_same_mask():
    # Prepare: 1 layer, 9 experts; the batch's rows may use only a few of them
    torch.manual_seed(0)
    anchor, rows, bias = torch.randn(1, 16), torch.randn(1, 9, 16), torch.randn(10)
    allowed = torch.zeros(3, 10, dtype=torch.bool)
    allowed[:, 0] = True
    allowed[0, [2, 5]] = True
    allowed[1, [5, 7]] = True                     # row 2: public only
    h = torch.randn(3, 4, 16)
    state = RouterState(anchor, rows, top_k=2, temperature=0.8, bias=bias)
    state.allowed = allowed
    # Execute
    state.compute(0, h)
    narrowed = torch.cat([1 - state.expert_weights(0).sum(-1, keepdim=True), state.expert_weights(0)], -1)
    full = gate_weights(h, torch.cat([anchor, rows[0]]), top_k=2, temperature=0.8, bias=bias, allowed=allowed)
    # Assert
    assert state._columns().tolist() == [0, 2, 5, 7]
    assert torch.allclose(narrowed, full, atol=1e-6)


def _tiny_model(d: int = 16, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=d, intermediate_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _experts(model, n: int):
    d, L = model.config.hidden_size, model.config.num_hidden_layers
    g = torch.Generator().manual_seed(3)
    paths = [f"model.layers.{i}.self_attn.{p}" for i in range(L) for p in ("q_proj", "v_proj")]
    return [ExpertWeights(name=f"e{j}", lora={p: (torch.randn(4, d, generator=g) * 0.3,
                                                   torch.randn(d, 4, generator=g) * 0.3) for p in paths},
                          scaling=1.0, router_rows=torch.randn(L, d, generator=g),
                          anchor_rows=torch.zeros(L, d), pilots=torch.zeros(1, 1)) for j in range(n)]


def test_composed_model_opt_out_equals_never_having_the_expert_on_the_sparse_path():
    # Prepare
    model = _tiny_model()
    experts = _experts(model, 5)
    ids = torch.randint(0, 50, (2, 7))
    allowed = torch.tensor([True, False, True, True, False])
    with_all = ComposedModel(model, experts, top_k=2)
    # Execute
    with torch.inference_mode():
        masked = with_all(ids, allowed=allowed).logits
    with_all.close()
    kept = ComposedModel(model, [e for e, ok in zip(experts, allowed.tolist()) if ok], top_k=2)
    with torch.inference_mode():
        never = kept(ids).logits
    kept.close()
    # Assert
    assert torch.allclose(masked, never, atol=1e-5)


def test_composed_model_sparse_path_equals_the_dense_formula():
    # Prepare
    model = _tiny_model()
    composed = ComposedModel(model, _experts(model, 6), top_k=2)
    ids = torch.randint(0, 50, (3, 5))
    # Execute: the same forward twice, once with every MixtureLinear forced onto the dense stacked formula
    with torch.inference_mode():
        sparse = composed(ids).logits
        layers = [m for m in model.modules() if isinstance(m, MixtureLinear)]
        for m in layers:
            m._live = lambda: True                     # the training path: dense over every expert
        dense = composed(ids).logits
    composed.close()
    # Assert
    assert torch.allclose(sparse, dense, atol=1e-5)
