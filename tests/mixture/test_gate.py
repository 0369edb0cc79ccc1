import pytest
import torch

from expertmesh.mixture.gate import gate_weights, gate_weights_reference


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_batched_gate_matches_token_loop(top_k):
    # Prepare
    torch.manual_seed(0)
    h, rows, bias = torch.randn(2, 5, 16), torch.randn(4, 16), torch.randn(4)
    allowed = torch.tensor([[True, True, False, True], [True, True, True, True]])
    # Execute
    fast = gate_weights(h, rows, top_k=top_k, temperature=0.7, bias=bias, allowed=allowed)
    slow = gate_weights_reference(h, rows, top_k=top_k, temperature=0.7, bias=bias, allowed=allowed)
    # Assert
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast.sum(-1), torch.ones(2, 5))
    assert torch.all(fast[0, :, 2] == 0)                      # masked expert never takes mass
    assert int((fast[1] > 0).sum(-1).max()) <= top_k


def test_gate_is_scale_free():
    torch.manual_seed(1)
    h, rows = torch.randn(1, 3, 8), torch.randn(3, 8)
    assert torch.allclose(gate_weights(h, rows, top_k=3), gate_weights(h * 50.0, rows, top_k=3), atol=1e-6)
