"""Shared fixtures: a tiny config-built base (built once per session) and tiny trained experts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    from expertmesh.testing import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture()
def tiny_base(tiny_base_dir):
    """A fresh Base per test: ComposedModel wraps the model in place."""
    from expertmesh.base import load_base

    return load_base(str(tiny_base_dir))


def write_tiny_corpus(root: Path, domain: str, repeats: int = 30) -> Path:
    """A corpus dir in the corpora layout (train.jsonl + heldout.jsonl) from expertmesh.testing.TINY_TEXTS."""
    from expertmesh.corpora.records import write_records
    from expertmesh.testing import TINY_TEXTS

    d = root / domain
    d.mkdir(parents=True, exist_ok=True)
    texts = TINY_TEXTS[domain]
    write_records(d / "train.jsonl", [{"id": f"{domain}/{i}", "domain": domain, "source": "tiny", "text": texts[i % 2]}
                                      for i in range(repeats)])
    write_records(d / "heldout.jsonl", [{"id": f"{domain}/h{i}", "domain": domain, "source": "tiny",
                                         "text": " ".join(texts)} for i in range(6)])
    return d


@pytest.fixture(scope="session")
def tiny_corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-corpora")
    return {d: write_tiny_corpus(root, d) for d in ("medicine", "law", "code")}


def train_tiny_expert(base_dir: Path, data: Path, out: Path, name: str, **overrides):
    from expertmesh.expert.config import TrainConfig
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.expert.train import train_expert

    kw = dict(name=name, owner="acme", data=str(data), out=str(out), base=str(base_dir), steps=20, batch_size=4,
              seq_len=32, lr=5e-3, lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), num_pilots=2,
              eval_blocks=4)
    kw.update(overrides)
    return train_expert(TrainConfig(**kw), progress=False)


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory, tiny_base_dir, tiny_corpora) -> dict[str, Path]:
    """Three tiny experts (medicine r=4 q,v; law r=2 q,v,down; code r=8 o) trained once per session."""
    out = tmp_path_factory.mktemp("tiny-experts")
    from expertmesh.expert.manifest import LoraSpec

    shapes = {"medicine": LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
              "law": LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]),
              "code": LoraSpec(r=8, alpha=16, target_modules=["o_proj"])}
    return {d: train_tiny_expert(tiny_base_dir, tiny_corpora[d], out / d, d, lora=shapes[d]).out for d in shapes}


@pytest.fixture
def acme_registry(tmp_path, tiny_base_dir, monkeypatch):
    """A live registry (uvicorn in a thread, SQLite) on the tiny base; (url, a read/publish/coordinate token of
    owner "acme"), also logged in through EXPERTMESH_REGISTRY_URL / EXPERTMESH_TOKEN for the CLI."""
    pytest.importorskip("registry.app")
    from clients.registry_client import RegistryClient
    from expertmesh.base import load_base
    from registry.app import create_app
    from registry.settings import RegistrySettings
    from tests.registry.conftest import ADMIN_TOKEN, LiveServer

    settings = RegistrySettings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'r.db'}",
                                base_fingerprint=load_base(str(tiny_base_dir)).fingerprint, admin_token=ADMIN_TOKEN)
    with LiveServer(create_app(settings)) as server, RegistryClient(server.url, ADMIN_TOKEN) as admin:
        admin.create_owner("acme")
        token = admin.create_token("acme", ["read", "publish", "coordinate"]).token
        monkeypatch.setenv("EXPERTMESH_REGISTRY_URL", server.url)
        monkeypatch.setenv("EXPERTMESH_TOKEN", token)
        yield server.url, token
