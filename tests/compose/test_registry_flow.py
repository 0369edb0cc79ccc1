"""Coordinator flow against a real registry (uvicorn in a thread, SQLite): publish experts, `compose build`
from the registry, then a server-side runtime that drops a member its owner withdrew."""
import torch

from tests.compose.conftest import fresh_base


def test_build_from_registry_and_serve_with_a_withdrawal(acme_registry, tiny_experts, tiny_base_dir, tmp_path,
                                                         monkeypatch):
    from click.testing import CliRunner

    from clients.registry_client import RegistryClient
    from cli.main import cli
    from expertmesh.compose.remote import load_remote_runtime

    url, token = acme_registry                           # logged in as acme
    monkeypatch.setenv("EXPERTMESH_CACHE", str(tmp_path / "cache"))
    with RegistryClient(url, token) as reg:
        for path in tiny_experts.values():
            reg.publish(path)
    # Execute: the coordinator's command
    res = CliRunner().invoke(cli, ["compose", "build", "clinic", "--router", "retrieve", "--top-m", "2"])
    assert res.exit_code == 0, res.output
    assert "stored clinic@1" in res.output
    with RegistryClient(url, token) as reg:
        info = reg.get_composition("clinic")
        assert [m.name for m in info.members] == sorted(tiny_experts) and info.router_type == "retrieve"
        full = load_remote_runtime(reg, "clinic", base=fresh_base(tiny_base_dir))
        reg.withdraw("law", "consent revoked")
        served = load_remote_runtime(reg, "clinic", base=fresh_base(tiny_base_dir))
    # Assert: the withdrawn member is gone, and what remains equals the full composition with law excluded
    assert "law" not in served.member_names and any("withdrawn" in n for n in served.notes)
    ids = served.base.tokenizer(["the licensee shall not sublicense"], return_tensors="pt")["input_ids"]
    prompt = ["the licensee shall not sublicense"]
    assert torch.allclose(served.logits(ids, None, served.plan(prompt, selection="token")),
                          full.logits(ids, None, full.plan(prompt, exclude=["law"], selection="token")), atol=1e-5)
