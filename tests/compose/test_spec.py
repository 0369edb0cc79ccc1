import json
import shutil

import pytest
import torch

from expertmesh.compose import (
    CompositionSpec, MemberRef, RouterType, build_composition, get_router, read_composition, register_router,
    verify_composition, write_composition,
)
from expertmesh.errors import BaseMismatchError, ConfigError, PackageError

FP = "f" * 64


def _spec(**kw):
    d = dict(name="c", base_fingerprint=FP, router_type="domain", members=[MemberRef(name="a"), MemberRef(name="b")])
    d.update(kw)
    return CompositionSpec(**d)


def _tensors(n=2, L=2, d=4):
    return {"expert_rows": torch.randn(L, n, d), "anchor_rows": torch.randn(L, d),
            "pilots": torch.nn.functional.normalize(torch.randn(3, 5), dim=-1),
            "pilot_owner": torch.tensor([0, 0, 1])}


@pytest.mark.parametrize("bad, match", [
    ({"router_type": "nope"}, "router_type='nope'"),
    ({"selection": "tokens"}, "selection='tokens'"),
    ({"top_k": 0}, "top_k=0"),
    ({"temperature": 0.0}, "temperature"),
    ({"members": [MemberRef(name="a"), MemberRef(name="a")]}, "more than once"),
    ({"members": []}, "at least one"),
    ({"name": "Bad Name"}, "not a valid name"),
])
def test_spec_fields_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        _spec(**bad)


def test_write_read_round_trip_and_tamper_checks(tmp_path):
    spec, t = _spec(), _tensors()
    write_composition(tmp_path / "c", spec, t)
    got_spec, got = read_composition(tmp_path / "c")
    assert got_spec.member_names == ["a", "b"] and torch.equal(got["expert_rows"], t["expert_rows"])
    assert set(got_spec.files) == {"router.safetensors"}
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "c", bad)
    (bad / "router.safetensors").write_bytes((bad / "router.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PackageError, match="sha256"):
        verify_composition(bad)
    (bad / "weights.pkl").write_bytes(b"x")
    with pytest.raises(PackageError, match="not allowed"):
        verify_composition(bad)


def test_tensor_shapes_and_prefixes_are_checked(tmp_path):
    t = _tensors()
    with pytest.raises(PackageError, match="expected \\[L, 3, d\\]"):
        write_composition(tmp_path / "a", _spec(members=[MemberRef(name=n) for n in "abc"]), t)
    with pytest.raises(PackageError, match="prefixed 'domain.'"):
        write_composition(tmp_path / "b", _spec(), {**t, "mot.layers": torch.zeros(1)})
    with pytest.raises(PackageError, match="member indices"):
        write_composition(tmp_path / "c", _spec(), {**t, "pilot_owner": torch.tensor([0, 0, 5])})
    assert not any(p.name in {"a", "b", "c"} for p in tmp_path.iterdir())     # nothing half-written


def test_external_router_type_registers_and_builds(tmp_path, tiny_experts):
    @register_router("test-ext")
    class ExtRouter(RouterType):
        default_options = {"selection": "token", "top_k": 1}

        def build_tensors(self, experts, base, options):
            t = super().build_tensors(experts, base, {})
            t["test-ext.scale"] = torch.ones(1)
            return t

    spec, tensors = build_composition("ext", tiny_experts, "test-ext", out=tmp_path / "ext")
    assert spec.top_k == 1 and isinstance(get_router("test-ext"), ExtRouter)
    assert "test-ext.scale" in read_composition(tmp_path / "ext")[1]
    with pytest.raises(ConfigError, match="already registered"):
        register_router("test-ext")(type("Other", (RouterType,), {}))


def test_experts_of_different_bases_are_refused(tmp_path, tiny_experts):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_experts["law"], odd)
    m = json.loads((odd / "manifest.json").read_text())
    m["base_fingerprint"] = "0" * 64                     # manifest.json is not in its own checksum list
    (odd / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BaseMismatchError, match="different bases"):
        build_composition("mixed", {"medicine": tiny_experts["medicine"], "law": odd}, "domain")


def test_tuned_router_reads_a_tuning_artifact(tmp_path, tiny_experts):
    from safetensors.torch import save_file

    _, plain = build_composition("p", tiny_experts, "domain")
    rows = torch.randn_like(plain["expert_rows"])
    order = ["code", "law", "medicine"]                  # artifact rows in another order than the members
    perm = [list(tiny_experts).index(n) for n in order]
    save_file({"expert_rows": rows[:, perm].contiguous(), "bias": torch.tensor([0.0, 1.0, 2.0, 3.0])},
              str(tmp_path / "tuned.safetensors"), metadata={"members": json.dumps(order)})
    spec, t = build_composition("t", tiny_experts, "tuned", artifact=tmp_path / "tuned.safetensors")
    assert torch.equal(t["expert_rows"], rows)
    assert t["bias"].tolist() == [0.0, 3.0, 2.0, 1.0]    # public, medicine, law, code
    with pytest.raises(ConfigError, match="needs artifact"):
        build_composition("t", tiny_experts, "tuned")
