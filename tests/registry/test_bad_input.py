"""Malformed requests get a 4xx with a machine-readable body, and a refused or interrupted upload leaves no
blob, no row and no temp file behind. Run on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import pickle

import pytest
from tests.registry.conftest import BASE_FP, OTHER_FP, assert_error, blobs_and_rows, make_expert_package, pack, raw_tar

from expertmesh.fileio import sha256_file


def assert_nothing_left(api):
    blobs, rows, leftovers = blobs_and_rows(api.registry)
    assert (blobs, rows, leftovers) == ([], 0, [])


def package_files(tmp_path, name="law-expert"):
    pkg = make_expert_package(tmp_path / "pkg", name)
    return pkg, {p.name: p.read_bytes() for p in pkg.iterdir()}


@pytest.mark.parametrize("name", ["Law", "a..b", "-lead", "x" * 65, "sp ace", "ünï"])
def test_malformed_names(api, name):
    h = api.owner("alice")

    r = api.upload(f"/v1/experts/{name}/versions", b"x", h)

    assert_error(r, 400, "invalid_input")


def test_path_in_url_is_not_routed(api):
    h = api.owner("alice")

    for path in ("/v1/experts/..%2Fetc/versions", "/v1/experts/../../etc/passwd"):
        r = api.client.get(path, headers=h)
        assert r.status_code in (400, 404) and r.json()["error"]["code"] in {"not_found", "invalid_input"}


def test_path_traversal_and_links_inside_the_tar(api, tmp_path):
    h = api.owner("alice")
    _, files = package_files(tmp_path)

    traversal = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "../evil": b"x"}), h)
    absolute = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "/tmp/evil": b"x"}), h)
    nested = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "sub/README.md": b"x"}), h)
    link = api.upload("/v1/experts/law-expert/versions", raw_tar(files, symlink=("README.md", "/etc/passwd")), h)

    for r in (traversal, absolute, nested):
        assert "path traversal" in assert_error(r, 422, "invalid_package")["message"] or "not allowed" in r.text
    assert "link" in assert_error(link, 422, "invalid_package")["message"]
    assert not (tmp_path.parent / "evil").exists()
    assert_nothing_left(api)


def test_pickle_and_unknown_files_are_refused(api, tmp_path):
    h = api.owner("alice")
    pkg, files = package_files(tmp_path)
    pickled = pickle.dumps({"weight": [1.0, 2.0]})

    extra_pickle = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "adapter_model.bin": pickled}), h)
    extra_file = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "notes.txt": b"hi"}), h)
    # a pickle disguised as safetensors, with the manifest re-hashed so only the content check can catch it
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["adapter_model.safetensors"] = hashlib.sha256(pickled).hexdigest()
    disguised = api.upload("/v1/experts/law-expert/versions", raw_tar(
        {**files, "adapter_model.safetensors": pickled, "manifest.json": json.dumps(manifest).encode()}), h)

    assert "not allowed" in assert_error(extra_pickle, 422, "invalid_package")["message"]
    assert "not allowed" in assert_error(extra_file, 422, "invalid_package")["message"]
    assert "safetensors" in assert_error(disguised, 422, "invalid_package")["message"]
    assert_nothing_left(api)


def test_tampered_missing_and_malformed_packages(api, tmp_path):
    h = api.owner("alice")
    _, files = package_files(tmp_path)
    no_sig = {k: v for k, v in files.items() if k != "signature.safetensors"}

    tampered = api.upload("/v1/experts/law-expert/versions",
                          raw_tar({**files, "adapter_config.json": files["adapter_config.json"] + b" "}), h)
    missing = api.upload("/v1/experts/law-expert/versions", raw_tar(no_sig), h)
    bad_manifest = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "manifest.json": b"{"}), h)
    gzipped = api.upload("/v1/experts/law-expert/versions", gzip.compress(raw_tar(files)), h)
    garbage = api.upload("/v1/experts/law-expert/versions", b"not a tar at all" * 100, h)
    wrong_name = api.upload("/v1/experts/other-name/versions", raw_tar(files), h)

    assert "sha256" in assert_error(tampered, 422, "invalid_package")["message"]
    assert_error(missing, 422, "invalid_package")
    assert_error(bad_manifest, 422, "invalid_package")
    assert_error(gzipped, 422, "invalid_package")
    assert_error(garbage, 422, "invalid_package")
    assert_error(wrong_name, 400, "invalid_input")
    assert_nothing_left(api)


def test_base_mismatch(api, tmp_path):
    h = api.owner("alice")
    pkg = make_expert_package(tmp_path / "p", "law-expert", base_fingerprint=OTHER_FP)

    r = api.publish(pkg, h)

    assert_error(r, 422, "base_mismatch")
    assert_nothing_left(api)


def test_wrong_or_missing_checksum(api, tmp_path):
    h = api.owner("alice")
    body, sha = pack(make_expert_package(tmp_path / "p", "law-expert"))

    wrong = api.upload("/v1/experts/law-expert/versions", body, h, sha="0" * 64)
    missing = api.client.post("/v1/experts/law-expert/versions", content=body, headers=h)
    malformed = api.upload("/v1/experts/law-expert/versions", body, h, sha="xyz")

    assert_error(wrong, 400, "integrity_error")
    assert_error(missing, 400, "invalid_input")
    assert_error(malformed, 400, "invalid_input")
    assert_nothing_left(api)


def test_oversize_upload(api, tmp_path):
    h = api.owner("alice")
    cap = api.registry.settings.max_upload_bytes
    big = b"\0" * (cap + 1)

    declared = api.upload("/v1/experts/law-expert/versions", big, h)
    # a body that lies about its length (chunked, no Content-Length) is cut off while streaming
    streamed = api.client.post("/v1/experts/law-expert/versions", content=iter([big[: cap // 2], big[cap // 2:]]),
                               headers={**h, "X-Content-SHA256": hashlib.sha256(big).hexdigest()})

    assert_error(declared, 413, "payload_too_large")
    assert_error(streamed, 413, "payload_too_large")
    assert_nothing_left(api)


def test_unpacked_size_cap(api, tmp_path):
    """A tar whose members claim more bytes than the cap is refused before writing them."""
    h = api.owner("alice")
    _, files = package_files(tmp_path)
    cap = api.registry.settings.max_upload_bytes
    r = api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "README.md": b"x" * (cap - 8 * 1024)}), h)
    assert r.status_code in (413, 422)
    assert_nothing_left(api)


def test_interrupted_upload_leaves_nothing(api, tmp_path):
    """The client hangs up after half the declared body: no temp file, blob or row remains."""
    h = api.owner("alice")
    body, sha = pack(make_expert_package(tmp_path / "p", "law-expert"))
    headers = [(b"authorization", h["Authorization"].encode()), (b"x-content-sha256", sha.encode()),
               (b"content-length", str(len(body)).encode()), (b"content-type", b"application/x-tar")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/experts/law-expert/versions", "raw_path": b"/v1/experts/law-expert/versions",
             "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 5555),
             "server": ("127.0.0.1", 80), "state": {}}
    messages = [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
                {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(api.app(scope, receive, send))

    assert_nothing_left(api)
    assert api.client.get("/v1/experts/law-expert", headers=h).status_code == 404


def test_failure_during_storage_leaves_nothing(api, tmp_path, monkeypatch):
    h = api.owner("alice")
    pkg = make_expert_package(tmp_path / "p", "law-expert")
    store = api.registry.store
    real_put = store.put_file
    calls = []

    def flaky_put(path, sha):
        calls.append(sha)
        if len(calls) == 2:
            raise OSError(28, "No space left on device (injected)")
        return real_put(path, sha)

    monkeypatch.setattr(store, "put_file", flaky_put)
    r = api.tolerant().publish(pkg, h)

    assert_error(r, 507, "storage_full")      # a full disk is named as such, not a generic 500
    assert_nothing_left(api)
    monkeypatch.setattr(store, "put_file", real_put)
    assert api.publish(pkg, h).status_code == 201


def test_failure_inside_the_transaction_leaves_nothing(api, tmp_path, monkeypatch):
    """Blobs already stored, then the database transaction fails: rows roll back, the new blobs are removed."""
    import registry.events as events

    h = api.owner("alice")
    pkg = make_expert_package(tmp_path / "p", "law-expert")

    def broken(*a, **kw):
        raise RuntimeError("injected failure before commit")

    monkeypatch.setattr(events, "record_change", broken)
    r = api.tolerant().publish(pkg, h)

    assert r.status_code == 500
    assert_nothing_left(api)
    with api.registry.db.read() as s:
        from sqlalchemy import func, select

        from registry.models import Expert
        assert s.scalar(select(func.count()).select_from(Expert)) == 0


def test_shared_blobs_survive_a_failed_publish(api, tmp_path, monkeypatch):
    """A failed publish deletes only blobs no committed version references."""
    import registry.events as events

    h = api.owner("alice")
    first = make_expert_package(tmp_path / "a", "law-expert", seed=1)
    assert api.publish(first, h).status_code == 201
    blobs_before, _, _ = blobs_and_rows(api.registry)
    second = make_expert_package(tmp_path / "b", "law-expert", seed=1, description="same tensors, new text")
    monkeypatch.setattr(events, "record_change", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("x")))

    assert api.tolerant().publish(second, h).status_code == 500

    blobs_after, rows, leftovers = blobs_and_rows(api.registry)
    assert blobs_after == blobs_before and rows == 1 and leftovers == []
    assert all(api.registry.store.exists(sha256_file(first / f)) for f in ("adapter_model.safetensors",))


def test_validation_errors_have_the_error_body(api):
    h = api.owner("alice")

    empty_reason = api.client.post("/v1/experts/x/withdraw", json={"reason": ""}, headers=h)
    not_json = api.client.post("/v1/experts/x/withdraw", content=b"{", headers={**h, "Content-Type": "application/json"})
    bad_limit = api.client.get("/v1/experts", params={"limit": 0}, headers=h)
    bad_status = api.client.get("/v1/experts", params={"status": "deleted"}, headers=h)
    bad_method = api.client.put("/v1/experts", headers=h)

    for r in (empty_reason, not_json, bad_limit):
        assert_error(r, 400, "invalid_input")
    assert_error(bad_status, 400, "invalid_input")
    assert_error(bad_method, 405, "method_not_allowed")


def test_base_fingerprint_unset_accepts_any_base_and_records_it(tmp_path, settings):
    from fastapi.testclient import TestClient

    from tests.registry.conftest import Api
    from registry.app import create_app

    app = create_app(settings.with_(base_fingerprint=None))
    with TestClient(app) as client:
        api = Api(client, app)
        h = api.owner("alice")
        r1 = api.publish(make_expert_package(tmp_path / "a", "law-expert", base_fingerprint=OTHER_FP), h)
        r2 = api.publish(make_expert_package(tmp_path / "b", "code-expert", base_fingerprint=BASE_FP), h)
        listed = {e["name"]: e["base_fingerprint"] for e in client.get("/v1/experts", headers=h).json()["items"]}

    assert r1.status_code == r2.status_code == 201
    assert listed == {"law-expert": OTHER_FP, "code-expert": BASE_FP}
