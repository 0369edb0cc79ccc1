"""Gate maths behind exact opt-out: a masked entry equals an absent one, ties included."""
import torch

from expertmesh.mixture.gate import gate_weights, gate_weights_reference


def test_masked_entry_equals_absent_entry_even_with_tied_logits():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 8)
    h[:, :3] = 0.0                                      # h = 0 (a zero pad embedding): every logit ties
    rows = torch.randn(5, 8)
    keep = [0, 1, 3, 4]                                 # drop entry 2
    allowed = torch.tensor([[True, True, False, True, True]] * 2)
    masked = gate_weights(h, rows, top_k=2, allowed=allowed)
    absent = gate_weights(h, rows[keep], top_k=2)
    assert torch.equal(masked[..., 2], torch.zeros(2, 6))
    assert torch.allclose(masked[..., keep], absent, atol=1e-7)
    assert torch.allclose(masked, gate_weights_reference(h, rows, top_k=2, allowed=allowed), atol=1e-6)


def test_public_only_mask_gives_the_public_entry_all_weight():
    h, rows = torch.randn(1, 4, 8), torch.randn(3, 8)
    w = gate_weights(h, rows, top_k=2, allowed=torch.tensor([[True, False, False]]))
    assert torch.equal(w, torch.tensor([1.0, 0.0, 0.0]).expand(1, 4, 3))
