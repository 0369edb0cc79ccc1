"""Expert API paths (publish, list, show, download, withdraw/restore), run on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import json
import tarfile

from tests.registry.conftest import assert_error, make_expert_package

from expertmesh.expert.package import verify_package
from expertmesh.archive import safe_extract


def test_publish_assigns_versions_and_is_idempotent(api, tmp_path):
    h = api.owner("alice")
    pkg1 = make_expert_package(tmp_path / "p1", "law-expert", seed=1)
    pkg2 = make_expert_package(tmp_path / "p2", "law-expert", seed=2)

    first, again, second = api.publish(pkg1, h), api.publish(pkg1, h), api.publish(pkg2, h)

    assert (first.status_code, first.json()["version"], first.json()["created"]) == (201, 1, True)
    assert (again.status_code, again.json()["version"], again.json()["created"]) == (200, 1, False)
    assert (second.status_code, second.json()["version"]) == (201, 2)
    assert again.json()["identity"] == first.json()["identity"] != second.json()["identity"]


def test_show_list_and_search(api, tmp_path):
    alice, bob = api.owner("alice"), api.owner("bob")
    api.publish(make_expert_package(tmp_path / "a", "law-expert", tags=("law",)), alice)
    api.publish(make_expert_package(tmp_path / "b", "med-expert", tags=("medicine", "clinical")), alice)
    api.publish(make_expert_package(tmp_path / "c", "code-expert", owner="bob", tags=("code",)), bob)

    everything = api.client.get("/v1/experts", headers=bob).json()
    by_domain = api.client.get("/v1/experts", params={"domain": "medicine"}, headers=bob).json()
    by_owner = api.client.get("/v1/experts", params={"owner": "bob"}, headers=bob).json()
    by_q = api.client.get("/v1/experts", params={"q": "-exp"}, headers=bob).json()
    page = api.client.get("/v1/experts", params={"limit": 2, "offset": 2}, headers=bob).json()
    shown = api.client.get("/v1/experts/med-expert", headers=bob).json()
    latest = api.client.get("/v1/experts/med-expert/versions/latest", headers=bob).json()

    assert [e["name"] for e in everything["items"]] == ["code-expert", "law-expert", "med-expert"]
    assert [e["name"] for e in by_domain["items"]] == ["med-expert"]
    assert by_domain["items"][0]["domain_tags"] == ["clinical", "medicine"]
    assert [e["name"] for e in by_owner["items"]] == ["code-expert"]
    assert by_q["total"] == 3 and page["total"] == 3 and [e["name"] for e in page["items"]] == ["med-expert"]
    assert shown["owner"] == "alice" and shown["latest_version"] == 1 and len(shown["versions"]) == 1
    assert shown["versions"][0]["manifest"]["version"] == 1
    assert latest["version"] == 1 and set(latest["files"]) == {"adapter_config.json", "adapter_model.safetensors",
                                                               "signature.safetensors"}


def test_download_is_a_verified_package_with_version_set(api, tmp_path):
    h = api.owner("alice")
    api.publish(make_expert_package(tmp_path / "p", "law-expert"), h)

    r = api.client.get("/v1/experts/law-expert/versions/1/archive", headers=h)

    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    (tmp_path / "tar").write_bytes(r.content)
    out = tmp_path / "out"
    out.mkdir()
    safe_extract(tmp_path / "tar", out, allowed={"manifest.json", "adapter_config.json", "adapter_model.safetensors",
                                                  "signature.safetensors"}, max_bytes=1 << 20)
    manifest = verify_package(out)
    assert manifest.version == 1 and manifest.name == "law-expert"
    import hashlib
    assert hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == r.headers["x-document-sha256"]
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(r.content))]
    assert names == sorted(names)


def test_unknown_expert_and_version(api, tmp_path):
    h = api.owner("alice")
    api.publish(make_expert_package(tmp_path / "p", "law-expert"), h)

    assert_error(api.client.get("/v1/experts/nobody", headers=h), 404, "unknown_expert")
    assert_error(api.client.get("/v1/experts/law-expert/versions/9", headers=h), 404, "unknown_expert")
    assert_error(api.client.get("/v1/experts/law-expert/versions/9/archive", headers=h), 404, "unknown_expert")
    assert_error(api.client.get("/v1/experts/law-expert/versions/zero", headers=h), 400, "invalid_input")
    assert_error(api.client.post("/v1/experts/nobody/withdraw", json={"reason": "x"}, headers=h), 404,
                 "unknown_expert")


def test_withdraw_and_restore(api, tmp_path):
    alice = api.owner("alice")
    reader = api.owner("carol", ("read",))
    api.publish(make_expert_package(tmp_path / "p1", "law-expert", seed=1), alice)
    api.publish(make_expert_package(tmp_path / "p2", "law-expert", seed=2), alice)

    one = api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "bad data", "version": 2}, headers=alice)
    latest_after_one = api.client.get("/v1/experts/law-expert/versions/latest", headers=reader).json()
    v2_for_reader = api.client.get("/v1/experts/law-expert/versions/2/archive", headers=reader)
    v2_for_owner = api.client.get("/v1/experts/law-expert/versions/2/archive", headers=alice)
    whole = api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "consent revoked"}, headers=alice)
    again = api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "again"}, headers=alice)
    listed_active = api.client.get("/v1/experts", headers=reader).json()
    listed_withdrawn = api.client.get("/v1/experts", params={"status": "withdrawn"}, headers=reader).json()
    latest_after_all = api.client.get("/v1/experts/law-expert/versions/latest", headers=reader)
    restored = api.client.post("/v1/experts/law-expert/restore", json={"reason": "renewed"}, headers=alice)
    shown = api.client.get("/v1/experts/law-expert", headers=reader).json()

    assert one.json()["changed"] and latest_after_one["version"] == 1
    assert_error(v2_for_reader, 410, "expert_withdrawn")
    assert v2_for_owner.status_code == 200
    assert whole.json()["status"] == "withdrawn" and not again.json()["changed"]
    assert listed_active["total"] == 0 and [e["name"] for e in listed_withdrawn["items"]] == ["law-expert"]
    assert_error(latest_after_all, 410, "expert_withdrawn")
    assert restored.json()["status"] == "active"
    assert shown["status"] == "active" and shown["latest_active_version"] == 1
    assert [v["status"] for v in shown["versions"]] == ["active", "withdrawn"]
    assert shown["versions"][1]["status_reason"] == "bad data"


def test_only_the_owner_or_an_admin_changes_an_expert(api, tmp_path):
    alice, bob = api.owner("alice"), api.owner("bob")
    api.publish(make_expert_package(tmp_path / "p", "law-expert"), alice)

    takeover = api.publish(make_expert_package(tmp_path / "q", "law-expert", owner="bob"), bob)
    as_alice = api.publish(make_expert_package(tmp_path / "r", "new-expert", owner="alice"), bob)
    withdraw = api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "x"}, headers=bob)
    by_admin = api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "court order"}, headers=api.admin)

    assert_error(takeover, 403, "permission_denied")
    assert_error(as_alice, 403, "permission_denied")
    assert_error(withdraw, 403, "permission_denied")
    assert by_admin.status_code == 200 and by_admin.json()["changed"]


def test_authentication_and_scopes(api, tmp_path):
    alice = api.owner("alice")
    reader = api.owner("alice", ("read",))
    coordinator = api.owner("coord", ("coordinate",))
    pkg = make_expert_package(tmp_path / "p", "law-expert")

    no_token = api.client.get("/v1/experts")
    bad_token = api.client.get("/v1/experts", headers={"Authorization": "Bearer emr_nope"})
    wrong_scheme = api.client.get("/v1/experts", headers={"Authorization": "Basic abc"})
    read_publish = api.publish(pkg, reader)
    coord_publish = api.publish(pkg, coordinator)
    tokens = api.client.get("/v1/owners/alice/tokens", headers=alice).json()
    not_admin = api.client.post("/v1/owners", json={"name": "mallory"}, headers=alice)
    revoked = api.client.delete(f"/v1/tokens/{tokens[0]['id']}", headers=alice)
    after_revoke = api.client.get("/v1/experts", headers=alice)

    for r in (no_token, bad_token, wrong_scheme):
        assert_error(r, 401, "unauthenticated")
    assert no_token.headers["www-authenticate"] == "Bearer"
    assert_error(read_publish, 403, "permission_denied")
    assert_error(coord_publish, 403, "permission_denied")
    assert_error(not_admin, 403, "permission_denied")
    assert [t["scopes"] for t in tokens] == [["publish"], ["read"]] and "token" not in tokens[0]
    assert revoked.json()["revoked_at"] is not None
    assert_error(after_revoke, 401, "unauthenticated")


def test_owner_and_token_admin(api):
    created = api.client.post("/v1/owners", json={"name": "st-marys", "display_name": "St Mary's"}, headers=api.admin)
    dup = api.client.post("/v1/owners", json={"name": "st-marys"}, headers=api.admin)
    bad = api.client.post("/v1/owners", json={"name": "St Marys"}, headers=api.admin)
    reserved = api.client.post("/v1/owners", json={"name": "admin"}, headers=api.admin)
    bad_scope = api.client.post("/v1/owners/st-marys/tokens", json={"scopes": ["root"]}, headers=api.admin)
    no_owner = api.client.post("/v1/owners/ghost/tokens", json={"scopes": ["read"]}, headers=api.admin)
    issued = api.client.post("/v1/owners/st-marys/tokens", json={"scopes": ["publish", "read"], "label": "ci"},
                             headers=api.admin).json()
    me = api.client.get("/v1/whoami", headers={"Authorization": f"Bearer {issued['token']}"}).json()

    assert created.status_code == 201 and created.json()["display_name"] == "St Mary's"
    assert_error(dup, 409, "conflict")
    assert_error(bad, 400, "invalid_input")
    assert_error(reserved, 400, "invalid_input")
    assert_error(bad_scope, 400, "invalid_input")
    assert_error(no_owner, 404, "not_found")
    assert issued["token"].startswith("emr_") and issued["scopes"] == ["publish", "read"]
    assert me == {"owner": "st-marys", "scopes": ["publish", "read"], "is_admin": False, "token_id": issued["id"]}


def test_change_feed_revision_and_etag(api, tmp_path):
    alice = api.owner("alice")
    r0 = api.client.get("/v1/revision", headers=alice)
    etag = r0.headers["etag"]
    unchanged = api.client.get("/v1/revision", headers={**alice, "If-None-Match": etag})
    api.publish(make_expert_package(tmp_path / "p", "law-expert"), alice)
    api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "x"}, headers=alice)
    api.client.post("/v1/experts/law-expert/restore", json={"reason": "y"}, headers=alice)
    changed = api.client.get("/v1/revision", headers={**alice, "If-None-Match": etag})
    feed = api.client.get("/v1/changes", params={"since": r0.json()["revision"]}, headers=alice).json()
    tail = api.client.get("/v1/changes", params={"since": feed["events"][1]["revision"]}, headers=alice).json()

    assert r0.json()["revision"] == 0 and unchanged.status_code == 304 and unchanged.content == b""
    assert changed.status_code == 200 and changed.json()["revision"] == 3 and changed.headers["etag"] == '"3"'
    assert [e["kind"] for e in feed["events"]] == ["expert.published", "expert.withdrawn", "expert.restored"]
    assert [e["revision"] for e in feed["events"]] == [1, 2, 3] and feed["next_since"] == 3
    assert feed["events"][1]["detail"]["reason"] == "x"
    assert [e["kind"] for e in tail["events"]] == ["expert.restored"]


def test_audit_log_visibility(api, tmp_path):
    alice, bob = api.owner("alice"), api.owner("bob")
    api.publish(make_expert_package(tmp_path / "a", "law-expert"), alice)
    api.publish(make_expert_package(tmp_path / "b", "code-expert", owner="bob"), bob)
    api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "x"}, headers=alice)

    for_admin = api.client.get("/v1/audit", headers=api.admin).json()
    for_alice = api.client.get("/v1/audit", headers=alice).json()
    for_alice_filtered = api.client.get("/v1/audit", params={"subject": "law-expert"}, headers=alice).json()

    actions = {(a["actor"], a["action"], a["subject_name"]) for a in for_admin}
    assert {("alice", "expert.published", "law-expert"), ("bob", "expert.published", "code-expert"),
            ("alice", "expert.withdrawn", "law-expert"), ("admin", "owner.created", "alice")} <= actions
    assert all(a["subject_name"] == "alice" or a["subject_name"] == "law-expert" for a in for_alice)
    assert [a["action"] for a in for_alice_filtered] == ["expert.withdrawn", "expert.published"]
    assert for_alice_filtered[0]["ip"] and for_alice_filtered[0]["detail"]["reason"] == "x"


def test_health_and_openapi(api):
    health = api.client.get("/healthz").json()
    spec = api.client.get("/openapi.json").json()

    assert health["status"] == "ok" and health["database"] in {"sqlite", "postgresql"}
    assert {"/v1/experts", "/v1/experts/{name}/versions", "/v1/revision", "/v1/changes", "/v1/audit",
            "/v1/compositions/{ref}"} <= set(spec["paths"])
    body = spec["paths"]["/v1/experts/{name}/versions"]["post"]["requestBody"]
    assert "application/x-tar" in body["content"]
    assert json.dumps(spec)  # serialisable


def test_streamed_and_inline_archives_are_identical(api, tmp_path, monkeypatch):
    import registry.api.experts as routes

    h = api.owner("alice")
    api.publish(make_expert_package(tmp_path / "p", "law-expert"), h)

    inline = api.client.get("/v1/experts/law-expert/versions/1/archive", headers=h)
    monkeypatch.setattr(routes, "INLINE_ARCHIVE_BYTES", 0)
    streamed = api.client.get("/v1/experts/law-expert/versions/1/archive", headers=h)

    assert inline.content == streamed.content and inline.headers["content-length"] == streamed.headers["content-length"]
