"""Regression tests of issue 13: one per hole an attacker's run found (numbered as in the issue). Each hole
was a 5xx, a listing broken for everyone, or a publisher getting more than its share; each is now a 4xx (or
503/507 for an outage) that names the field, and leaves the registry working for everyone else.
Run on SQLite and PostgreSQL (the ``api`` fixture)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from tests.registry.conftest import assert_error, blobs_and_rows, make_expert_package, pack, raw_tar

from expertmesh.fileio import sha256_file

BIG = [2**31, 2**63, 2**64]


def manifest_text(pkg: Path, transform) -> Path:  # noqa: ANN001
    """Rewrite manifest.json as text (it is not in its own files table, so the package stays consistent)."""
    path = pkg / "manifest.json"
    path.write_text(transform(path.read_text(encoding="utf-8")), encoding="utf-8")
    return pkg


def replace_file(pkg: Path, fname: str, data: bytes) -> Path:
    """Replace a package file and update its sha256 in the manifest, so only the content is hostile."""
    (pkg / fname).write_bytes(data)
    doc = json.loads((pkg / "manifest.json").read_text())
    doc["files"][fname] = sha256_file(pkg / fname)
    (pkg / "manifest.json").write_text(json.dumps(doc))
    return pkg


def listing_works(api, h) -> None:  # noqa: ANN001
    for status in ("active", "withdrawn", "all"):
        r = api.client.get("/v1/experts", params={"status": status}, headers=h)
        assert r.status_code == 200, r.text


# --- 1. NaN, Infinity, NUL, lone surrogates: refused; the listing never parses stored JSON -----------------------

@pytest.mark.parametrize("bad", [
    ('"training": {}', '"training": {"loss": NaN}'),
    ('"training": {}', '"training": {"loss": Infinity}'),
    ('"training": {}', '"training": {"loss": 1e999}'),
    ('"licence": "Apache-2.0"', '"licence": "Apache\\u0000"'),
    ('"licence": "Apache-2.0"', '"licence": "\\ud800"'),
    ('"training": {}', '"training": {"a\\u0000b": 1}'),
], ids=["nan", "infinity", "overflow", "nul", "surrogate", "nul-key"])
def test_non_json_numbers_and_bad_strings_in_a_manifest_are_refused(api, tmp_path, bad):
    h = api.owner("alice")
    pkg = make_expert_package(tmp_path / "p", "law-expert")
    manifest_text(pkg, lambda t: t.replace(bad[0].replace(": ", ":"), bad[1]).replace(bad[0], bad[1]))
    assert bad[1] in (pkg / "manifest.json").read_text()

    r = api.publish(pkg, h)

    assert_error(r, 422, "invalid_package")
    assert blobs_and_rows(api.registry)[:2] == ([], 0)
    listing_works(api, h)


def test_listing_reads_columns_not_the_stored_manifest(api, tmp_path, db_url):
    """Even a stored manifest the database cannot parse (as old rows may hold) leaves the list working."""
    from sqlalchemy import text

    h = api.owner("alice")
    assert api.publish(make_expert_package(tmp_path / "p", "law-expert", description="contract law"), h).status_code == 201
    if db_url.startswith("sqlite"):
        with api.registry.db.write() as s:
            s.execute(text("UPDATE expert_versions SET manifest = '{\"description\": NaN}'"))

    listed = api.client.get("/v1/experts", params={"status": "all"}, headers=h)

    assert listed.status_code == 200, listed.text
    assert listed.json()["items"][0]["description"] == "contract law"


def test_strict_json_request_bodies(api):
    h = api.owner("alice")
    raw = {**api.admin, "Content-Type": "application/json"}

    nan = api.client.post("/v1/owners", content=b'{"name": "bob", "display_name": NaN}', headers=raw)
    nul = api.client.post("/v1/owners", content=b'{"name": "bob", "display_name": "a\\u0000"}', headers=raw)
    surrogate = api.client.post("/v1/owners/alice/tokens", content=b'{"scopes": ["read"], "label": "\\udc00"}',
                                headers=raw)
    deep = api.client.post("/v1/experts/x/withdraw", content=b"[" * 100_000 + b"]" * 100_000,
                           headers={**h, "Content-Type": "application/json"})

    for r in (nan, nul, surrogate, deep):
        assert_error(r, 400, "invalid_input")
    assert "NaN" in nan.json()["error"]["message"]
    assert "$.display_name" in nul.json()["error"]["message"]
    assert "nested deeper" in deep.json()["error"]["message"]
    assert api.client.get("/v1/owners", headers=api.admin).json()[0]["name"] == "alice"   # nothing created


# --- 2. caps on the manifest and its free text -------------------------------------------------------------------

def test_manifest_caps(tmp_path, settings):
    from fastapi.testclient import TestClient

    from registry.app import create_app
    from tests.registry.conftest import Api

    app = create_app(settings.with_(max_upload_bytes=8 * 1024 * 1024))
    with TestClient(app) as client:
        api = Api(client, app)
        h = api.owner("alice")
        def edited(sub: str, **fields):  # noqa: ANN003, ANN202 - the packer refuses these, so edit after it
            return manifest_text(make_expert_package(tmp_path / sub, "law-expert"),
                                 lambda t: json.dumps({**json.loads(t), **fields}))

        long_text = edited("a", description="x" * 4097)
        many_tags = edited("b", domain_tags=[f"t{i}" for i in range(33)])
        huge = manifest_text(make_expert_package(tmp_path / "c", "law-expert"),
                             lambda t: t.replace('"training": {}', '"training": {"blob": "%s"}' % ("y" * 1_100_000)))
        ok = make_expert_package(tmp_path / "d", "law-expert", description="x" * 4096,
                                 tags=tuple(f"t{i}" for i in range(32)))

        assert "description" in assert_error(api.publish(long_text, h), 422, "invalid_package")["message"]
        assert "domain_tags" in assert_error(api.publish(many_tags, h), 422, "invalid_package")["message"]
        assert "limit" in assert_error(api.publish(huge, h), 422, "invalid_package")["message"]
        assert api.publish(ok, h).status_code == 201


def test_an_audit_like_section_of_modest_size_fits_the_caps():
    """Issue 15 adds an ``audit`` object to manifests: the caps are on size and depth, not on field names."""
    from expertmesh import strictjson

    audit = {"audit": {"checks": [{"name": f"check-{i}", "passed": True, "score": 0.5, "notes": "n" * 200}
                                  for i in range(50)], "tool": {"name": "x", "version": "1"}}}
    assert strictjson.loads(json.dumps(audit), what="manifest.json") == audit


# --- 3. integers and strings the database cannot hold: 400, never 500 ---------------------------------------------

def test_out_of_range_integers_are_400(api, tmp_path):
    h = api.owner("alice")
    assert api.publish(make_expert_package(tmp_path / "p", "law-expert"), h).status_code == 201
    answers = []
    for n in BIG:
        answers += [
            api.client.get("/v1/experts", params={"offset": n}, headers=h),
            api.client.get(f"/v1/experts/law-expert/versions/{n}", headers=h),
            api.client.get(f"/v1/experts/law-expert/versions/{n}/archive", headers=h),
            api.client.get("/v1/changes", params={"since": max(n, 2**63)}, headers=h),
            api.client.get("/v1/audit", params={"before": n}, headers=h),
            api.client.delete(f"/v1/tokens/{n}", headers=api.admin),
            api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "x", "version": n}, headers=h),
            api.client.post("/v1/experts/law-expert/restore", json={"reason": "x", "version": n}, headers=h),
            api.client.get(f"/v1/compositions/mesh@{n}", headers=h),
        ]
    for r in answers:
        assert_error(r, 400, "invalid_input")


def test_nul_and_long_strings_in_parameters_are_400(api, tmp_path):
    h = api.owner("alice")
    raw = {**api.admin, "Content-Type": "application/json"}

    answers = [
        api.client.get("/v1/experts", params={"q": "a\x00b"}, headers=h),
        api.client.get("/v1/audit", params={"subject": "a\x00b"}, headers=h),
        api.client.get("/v1/experts/law%00x", headers=h),
        api.client.post("/v1/owners/alice/tokens", content=b'{"scopes":["read"],"label":"a\\u0000"}', headers=raw),
        api.client.post("/v1/owners", content=b'{"name":"bob","display_name":"\\u0000"}', headers=raw),
        api.client.get("/v1/experts", params={"q": "x" * 65}, headers=h),
    ]
    for r in answers:
        assert_error(r, 400, "invalid_input")


def test_long_base_fingerprint_is_refused(tmp_path, settings):
    from fastapi.testclient import TestClient

    from registry.app import create_app
    from tests.registry.conftest import Api

    app = create_app(settings.with_(base_fingerprint=None))
    with TestClient(app) as client:
        api = Api(client, app)
        h = api.owner("alice")
        pkg = manifest_text(make_expert_package(tmp_path / "p", "law-expert"),
                            lambda t: json.dumps({**json.loads(t), "base_fingerprint": "a" * 129}))
        r = api.publish(pkg, h)
        assert "base_fingerprint" in assert_error(r, 422, "invalid_package")["message"]


# --- 4. revoking a token needs admin, or is the token itself ------------------------------------------------------

def test_only_admin_or_the_token_itself_may_revoke(api):
    publisher = api.owner("alice")
    reader = api.owner("alice", ("read",))
    tokens = api.client.get("/v1/owners/alice/tokens", headers=publisher).json()
    publish_id, read_id = tokens[0]["id"], tokens[1]["id"]
    owner_admin = api.client.post("/v1/owners/alice/tokens", json={"scopes": ["admin"]}, headers=api.admin).json()

    by_reader = api.client.delete(f"/v1/tokens/{publish_id}", headers=reader)
    on_admin = api.client.delete(f"/v1/tokens/{owner_admin['id']}", headers=publisher)
    itself = api.client.delete(f"/v1/tokens/{read_id}", headers=reader)
    by_owner_admin = api.client.delete(f"/v1/tokens/{publish_id}", headers={
        "Authorization": f"Bearer {owner_admin['token']}"})

    assert_error(by_reader, 403, "permission_denied")
    assert_error(on_admin, 403, "permission_denied")
    assert itself.status_code == 200 and itself.json()["revoked_at"]
    assert by_owner_admin.status_code == 200 and by_owner_admin.json()["revoked_at"]


def test_a_token_may_revoke_its_owners_narrower_tokens_only(api):
    # Prepare: alice has a publish and a read token; bob has a read token
    publisher = api.owner("alice")
    api.owner("alice", ("read",))
    api.owner("bob", ("read",))
    alice_tokens = api.client.get("/v1/owners/alice/tokens", headers=publisher).json()
    read_id = [t["id"] for t in alice_tokens if t["scopes"] == ["read"]][0]
    bob_read_id = api.client.get("/v1/owners/bob/tokens", headers=api.admin).json()[-1]["id"]

    # Execute
    narrower = api.client.delete(f"/v1/tokens/{read_id}", headers=publisher)
    other_owner = api.client.delete(f"/v1/tokens/{bob_read_id}", headers=publisher)
    missing = api.client.delete("/v1/tokens/99999", headers=publisher)

    # Assert: the narrower token of the same owner goes; another owner's and an unknown id are refused alike
    assert narrower.status_code == 200 and narrower.json()["revoked_at"]
    assert_error(other_owner, 403, "permission_denied")
    assert_error(missing, 403, "permission_denied")


# --- 5. clear failures at startup and at runtime -------------------------------------------------------------------

def _serve(*args: str, timeout: float = 60):
    cmd = [sys.executable, "-m", "cli.main", "registry", "serve", "--port", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_startup_failures_print_one_error_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")

    no_db = _serve("--db", "postgresql+psycopg://postgres@127.0.0.1:1/none", "--data-dir", str(tmp_path / "d"))
    bad_store = _serve("--data-dir", str(tmp_path / "file" / "data"))

    for r in (no_db, bad_store):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "database" in no_db.stderr and "127.0.0.1:1" in no_db.stderr
    assert "not writable" in bad_store.stderr


@pytest.mark.parametrize("errno_, status, code", [(28, 507, "storage_full"), (30, 503, "store_unavailable")])
def test_store_errors_at_runtime_are_507_or_503(api, tmp_path, monkeypatch, errno_, status, code):
    h = api.owner("alice")
    pkg = make_expert_package(tmp_path / "p", "law-expert")

    def broken(*_a, **_kw):
        raise OSError(errno_, "injected")

    monkeypatch.setattr(api.registry.store, "put_file", broken)
    r = api.publish(pkg, h)

    assert_error(r, status, code)
    assert blobs_and_rows(api.registry)[:2] == ([], 0)


def test_database_outage_is_503_and_health_says_so(api):
    from registry.db import Database, make_engine

    h = api.owner("alice")
    assert api.client.get("/healthz").json()["store"] == "ok"
    api.registry.db = Database(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"))

    health = api.client.get("/healthz")
    listed = api.client.get("/v1/experts", headers=h)

    assert_error(health, 503, "database_unavailable")
    assert_error(listed, 503, "database_unavailable")
    assert health.headers["retry-after"]


# --- 6. the schema states what the server does ----------------------------------------------------------------

def test_openapi_lists_errors_patterns_and_bounds(api):
    spec = api.client.get("/openapi.json").json()
    publish = spec["paths"]["/v1/experts/{name}/versions"]["post"]
    params = {p["name"]: p["schema"] for p in publish["parameters"]}
    listing = {p["name"]: p["schema"] for p in spec["paths"]["/v1/experts"]["get"]["parameters"]}

    assert {"400", "401", "403", "404", "409", "410", "413", "422", "503", "507"} <= set(publish["responses"])
    assert params["name"]["pattern"] and params["name"]["maxLength"] == 64
    assert listing["offset"]["maximum"] == 2**31 - 1
    assert spec["components"]["schemas"]["ErrorBody"]


def test_name_pattern_matches_check_name():
    import re

    from expertmesh.errors import ConfigError
    from expertmesh.validate import NAME_REGEX, check_name

    samples = ["a", "law-expert", "a.b", "a..b", "a.", "-a", "A", "a_b", "x" * 64, "x" * 65, "a\n", "1.2.3",
               "a.-b", "ab.", ".a", "a b", "ü"]
    for s in samples:
        try:
            check_name("n", s)
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted == (bool(re.fullmatch(NAME_REGEX.strip("^$"), s)) and len(s) <= 64), s


def test_405_lists_every_allowed_method(api):
    r = api.client.put("/v1/owners", headers=api.admin)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, POST"


# --- 7. orphaned blobs and spools are collected --------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_gc_removes_unreferenced_blobs_and_dead_spools(api, tmp_path):
    from registry import spools
    from registry.gc import collect

    h = api.owner("alice")
    assert api.publish(make_expert_package(tmp_path / "p", "law-expert"), h).status_code == 201
    kept = set(api.registry.store.iter_blobs())
    orphan, _ = api.registry.store.put_bytes(b"left by a publish killed before its commit")
    dead = api.registry.settings.scratch_dir / f"{_dead_pid()}@{spools._host()}~x.upload"
    dead.write_bytes(b"partial")
    live = api.registry.settings.scratch_dir / f"{spools.tag()}y.upload"
    live.write_bytes(b"in flight")

    young = collect(api.registry, grace_s=3600)      # the orphan is young: kept; the dead spool goes
    dead.write_bytes(b"partial")
    dry = collect(api.registry, dry_run=True, grace_s=0)
    assert orphan in set(api.registry.store.iter_blobs()) and dead.exists()
    done = collect(api.registry, grace_s=0)

    assert young.kept_young == 1 and young.unreferenced == [] and young.spools == [str(dead)]
    assert dry.unreferenced == [orphan] and dry.blobs_referenced == len(kept)
    assert done.unreferenced == [orphan] and not dead.exists() and live.exists()
    assert set(api.registry.store.iter_blobs()) == kept
    assert api.client.get("/v1/experts/law-expert/versions/1/archive", headers=h).status_code == 200


def test_startup_clears_spools_of_dead_uploads_at_once(settings):
    from fastapi.testclient import TestClient

    from registry import spools
    from registry.app import create_app

    settings.scratch_dir.mkdir(parents=True)
    dead = settings.scratch_dir / f"{_dead_pid()}@{spools._host()}~z.upload"
    dead.write_bytes(b"partial")            # young: the old rule kept it for an hour
    with TestClient(create_app(settings)):
        assert not dead.exists()


def test_gc_cli_dry_run(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli

    db = ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--data-dir", str(tmp_path / "data")]
    dry = CliRunner().invoke(cli, ["registry", "gc", "--dry-run", "--json", *db])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["dry_run"] is True


# --- 9. sparse members ----------------------------------------------------------------------------------------------

def gnu_sparse_tar(name: str, real_size: int, data: bytes = b"z" * 512) -> bytes:
    """One GNU sparse member: ``data`` stored, expanding to ``real_size`` bytes (the rest zeros)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    head = bytearray(info.tobuf(tarfile.GNU_FORMAT))

    def octal(n: int) -> bytes:
        return b"%011o\0" % n

    head[156:157] = b"S"
    head[386:398], head[398:410] = octal(real_size - len(data)), octal(len(data))
    head[482] = 0
    head[483:495] = octal(real_size)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    return bytes(head[:512]) + data + b"\0" * (-len(data) % 512) + b"\0" * 1024


def test_sparse_members_are_refused(api, tmp_path):
    h = api.owner("alice")
    body = gnu_sparse_tar("README.md", 100 * 1024)
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        assert tf.getmembers()[0].issparse()       # the fixture really is a sparse member

    r = api.upload("/v1/experts/law-expert/versions", body, h)

    assert "sparse" in assert_error(r, 422, "invalid_package")["message"]
    assert blobs_and_rows(api.registry) == ([], 0, [])


def test_member_count_is_capped(api):
    h = api.owner("alice")
    r = api.upload("/v1/experts/law-expert/versions", raw_tar({f"f{i}": b"" for i in range(50)}), h)
    assert_error(r, 422, "invalid_package")


# --- 10. a trailing newline is not part of a valid name ----------------------------------------------------------

def test_trailing_newline_names_are_refused(api, tmp_path):
    h = api.owner("alice")
    pkg = manifest_text(make_expert_package(tmp_path / "p", "mal"), lambda t: t.replace('"mal"', '"mal\\n"'))

    by_url = api.upload("/v1/experts/mal%0A/versions", pack(pkg)[0], h)
    owner = api.client.post("/v1/owners", json={"name": "mal\n"}, headers=api.admin)
    in_manifest = api.upload("/v1/experts/mal/versions", pack(pkg)[0], h)

    assert_error(by_url, 400, "invalid_input")
    assert_error(owner, 400, "invalid_input")
    assert in_manifest.status_code in (400, 422) and in_manifest.json()["error"]["code"] in {
        "invalid_input", "invalid_package"}
    assert api.client.get("/v1/experts", params={"status": "all"}, headers=h).json()["items"] == []


# --- 11. more inputs that raised inside the server ---------------------------------------------------------------

def _safetensors_with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize("case", ["deep-manifest", "deep-adapter-config", "deep-header", "files-list",
                                  "header-entry-list", "many-tags"])
def test_inputs_that_raised_are_422(api, tmp_path, case):
    h = api.owner("alice")
    pkg = make_expert_package(tmp_path / "p", "law-expert")
    deep = b"[" * 100_000 + b"]" * 100_000
    if case == "deep-manifest":
        manifest_text(pkg, lambda t: t.replace('"training": {}', '"training": {"x": %s}' % deep.decode()))
    elif case == "deep-adapter-config":
        replace_file(pkg, "adapter_config.json", b'{"peft_type": "LORA", "x": ' + deep + b"}")
    elif case == "deep-header":
        replace_file(pkg, "signature.safetensors", _safetensors_with_header(b'{"pilots": ' + deep + b"}"))
    elif case == "files-list":
        manifest_text(pkg, lambda t: json.dumps({**json.loads(t), "files": list(json.loads(t)["files"])}))
    elif case == "header-entry-list":
        replace_file(pkg, "signature.safetensors", _safetensors_with_header(b'{"pilots": [1, 2]}'))
    elif case == "many-tags":
        manifest_text(pkg, lambda t: json.dumps({**json.loads(t), "domain_tags": [f"t{i}" for i in range(50_000)]}))

    r = api.publish(pkg, h, name="law-expert") if case != "many-tags" else _publish_capped(api, pkg, h)

    assert r.status_code in (413, 422), r.text
    assert r.json()["error"]["code"] in {"invalid_package", "payload_too_large"}
    assert blobs_and_rows(api.registry)[:2] == ([], 0)


def _publish_capped(api, pkg, h):  # noqa: ANN001, ANN202
    # 50,000 tags are ~400 KB of manifest: over the test registry's 256 KiB upload cap, so use a larger one
    from fastapi.testclient import TestClient

    from registry.app import create_app
    from tests.registry.conftest import Api

    app = create_app(api.registry.settings.with_(max_upload_bytes=8 * 1024 * 1024))
    with TestClient(app) as client:
        other = Api(client, app)
        r = other.publish(pkg, {"Authorization": h["Authorization"]}, name="law-expert")
        assert "domain_tags" in r.json()["error"]["message"]
        return r
