"""Fixtures of the registry tests: tiny valid packages, a registry per test on SQLite or PostgreSQL, an API helper.

Every API test runs twice: on a SQLite file and, where a PostgreSQL server answers (``EXPERTMESH_TEST_PG_URL``,
default postgresql+psycopg://postgres@127.0.0.1:5432/test), in a schema created for that test and dropped after.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from safetensors.torch import save_file

from expertmesh.expert.manifest import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ExpertManifest, LoraSpec, SignatureSpec
from expertmesh.archive import pack_directory
from expertmesh.expert.package import finalize_manifest, save_signature
from tests.live_server import LiveServer, free_port  # noqa: F401  (tests import them from here)

BASE_FP = "f" * 16 + "0123456789abcdef" * 3   # 64 hex chars, stands in for a real base fingerprint
OTHER_FP = "e" * 64
ADMIN_TOKEN = "admin-secret-for-tests-0123456789"
PG_URL = os.environ.get("EXPERTMESH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- packages ---------------------------------------------------------------------------------------------------

def make_expert_package(dest: Path, name: str, *, owner: str = "alice", base_fingerprint: str = BASE_FP,
                        r: int = 2, layers: int = 2, hidden: int = 8, pilots: int = 3, embed_dim: int = 4,
                        tags: tuple[str, ...] = ("law",), seed: int = 0, description: str = "") -> Path:
    """A small but fully valid expert package (verify_package accepts it); a few KB on disk."""
    dest.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    (dest / ADAPTER_CONFIG_FILE).write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "target_modules": ["q_proj"],
        "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny"}), encoding="utf-8")
    weights = {}
    for i in range(layers):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        weights[f"{prefix}.lora_A.weight"] = torch.randn(r, hidden, generator=g)
        weights[f"{prefix}.lora_B.weight"] = torch.zeros(hidden, r)
    save_file(weights, str(dest / ADAPTER_WEIGHTS_FILE))
    save_signature(dest, torch.randn(layers, hidden, generator=g), torch.randn(layers, hidden, generator=g),
                   torch.nn.functional.normalize(torch.randn(pilots, embed_dim, generator=g), dim=-1))
    manifest = ExpertManifest(
        name=name, owner=owner, base_fingerprint=base_fingerprint,
        lora=LoraSpec(r=r, alpha=float(2 * r), dropout=0.0, target_modules=["q_proj"]),
        signature=SignatureSpec(num_layers=layers, hidden_size=hidden, num_pilots=pilots, embed_dim=embed_dim,
                                embedder="test-embedder"),
        domain_tags=list(tags), licence="Apache-2.0", description=description or f"test expert {name}",
    )
    finalize_manifest(dest, manifest)
    return dest


def make_composition_dir(dest: Path, name: str, members: list[tuple[str, int]], *,
                         base_fingerprint: str = BASE_FP, router: bool = True, extra: dict | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "router_type": "domain", "base_fingerprint": base_fingerprint,
           "members": [{"name": n, "version": v} for n, v in members], "policy": {"top_k": 2}, **(extra or {})}
    (dest / "composition.json").write_text(json.dumps(doc), encoding="utf-8")
    if router:
        save_file({"rows": torch.ones(2, 8)}, str(dest / "router.safetensors"))
    return dest


def pack(directory: Path) -> tuple[bytes, str]:
    buf = io.BytesIO()
    sha, _ = pack_directory(directory, buf)
    return buf.getvalue(), sha


def raw_tar(members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    """A hand-made tar (for hostile uploads the packer would refuse to produce)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tf.addfile(info)
    return buf.getvalue()


# --- databases --------------------------------------------------------------------------------------------------

_pg_state: dict[str, Any] = {}


def pg_reachable() -> str | None:
    """None if reachable, else the reason (checked once per session)."""
    if "reason" not in _pg_state:
        try:
            import psycopg

            with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=2):
                pass
            _pg_state["reason"] = None
        except Exception as e:  # noqa: BLE001 - any failure means "skip"
            _pg_state["reason"] = f"PostgreSQL not reachable at {PG_URL}: {type(e).__name__}: {e}"
    return _pg_state["reason"]


@contextlib.contextmanager
def pg_schema_url() -> Iterator[str]:
    import psycopg

    schema = f"em_test_{uuid.uuid4().hex[:12]}"
    dsn = PG_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    reason = pg_reachable()
    if reason:
        pytest.skip(reason)
    with pg_schema_url() as url:
        yield url


@pytest.fixture
def settings(tmp_path, db_url):
    from registry.settings import RegistrySettings

    return RegistrySettings(data_dir=tmp_path / "data", database_url=db_url, base_fingerprint=BASE_FP,
                            admin_token=ADMIN_TOKEN, max_upload_bytes=256 * 1024, db_pool_size=4)


# --- API helper -------------------------------------------------------------------------------------------------

class Api:
    """Thin helper over a TestClient: admin calls, tokens per owner, uploads, error-body assertions."""

    def __init__(self, client, app):
        self.client = client
        self.app = app
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @property
    def registry(self):
        return self.app.state.registry

    def owner(self, name: str, scopes: tuple[str, ...] = ("publish",)) -> dict[str, str]:
        """Create ``name`` if needed and return auth headers for a new token with ``scopes``."""
        r = self.client.post("/v1/owners", json={"name": name}, headers=self.admin)
        assert r.status_code in (201, 409), r.text
        r = self.client.post(f"/v1/owners/{name}/tokens", json={"scopes": list(scopes)}, headers=self.admin)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def tolerant(self) -> "Api":
        """The same app through a client that turns server errors into 500 answers (fault-injection tests)."""
        from fastapi.testclient import TestClient

        other = Api(TestClient(self.app, raise_server_exceptions=False), self.app)
        return other

    def upload(self, path: str, body: bytes, headers: dict[str, str], sha: str | None = None):
        import hashlib

        sha = sha or hashlib.sha256(body).hexdigest()
        return self.client.post(path, content=body, headers={**headers, "X-Content-SHA256": sha,
                                                             "Content-Type": "application/x-tar"})

    def publish(self, package: Path, headers: dict[str, str], name: str | None = None):
        body, sha = pack(package)
        name = name or json.loads((package / "manifest.json").read_text())["name"]
        return self.upload(f"/v1/experts/{name}/versions", body, headers, sha)

    def store_composition(self, directory: Path, headers: dict[str, str], name: str | None = None):
        body, sha = pack(directory)
        name = name or json.loads((directory / "composition.json").read_text())["name"]
        return self.upload(f"/v1/compositions/{name}/versions", body, headers, sha)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def api(settings) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from registry.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        yield Api(client, app)


def blobs_and_rows(registry) -> tuple[list[str], int, list[Path]]:
    """(blobs in the store, expert_version rows, leftover temp files anywhere under data/artifacts)."""
    from sqlalchemy import func, select

    from registry.models import ExpertVersion

    with registry.db.read() as s:
        rows = s.scalar(select(func.count()).select_from(ExpertVersion))
    leftovers = [p for p in registry.settings.scratch_dir.rglob("*")] + registry.store.leftovers()
    return list(registry.store.iter_blobs()), rows, leftovers


# --- a real server ----------------------------------------------------------------------------------------------


@pytest.fixture
def live(settings) -> Iterator[LiveServer]:
    from registry.app import create_app

    app = create_app(settings)
    with LiveServer(app) as server:
        server.app = app
        yield server
