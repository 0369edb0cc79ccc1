"""Composition API paths: store (coordinate scope), get latest / name@version, member status, download.
Run on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import json
import tarfile

import pytest
from tests.registry.conftest import OTHER_FP, assert_error, make_composition_dir, make_expert_package, raw_tar


@pytest.fixture
def mesh(api, tmp_path):
    """Two owners with one expert each, and a coordinator token."""
    alice, bob = api.owner("alice"), api.owner("bob")
    assert api.publish(make_expert_package(tmp_path / "law", "law-expert", tags=("law",)), alice).status_code == 201
    assert api.publish(make_expert_package(tmp_path / "med", "med-expert", owner="bob"), bob).status_code == 201
    return {"alice": alice, "bob": bob, "coord": api.owner("coordinator", ("coordinate",))}


def test_store_get_and_idempotency(api, mesh, tmp_path):
    comp = make_composition_dir(tmp_path / "c1", "law-med", [("law-expert", 1), ("med-expert", 1)])
    comp2 = make_composition_dir(tmp_path / "c2", "law-med", [("law-expert", 1)], router=False)

    first = api.store_composition(comp, mesh["coord"])
    again = api.store_composition(comp, mesh["coord"])
    second = api.store_composition(comp2, mesh["coord"])
    latest = api.client.get("/v1/compositions/law-med", headers=mesh["alice"]).json()
    pinned = api.client.get("/v1/compositions/law-med@1", headers=mesh["alice"]).json()
    pinned2 = api.client.get("/v1/compositions/law-med/versions/1", headers=mesh["alice"]).json()
    listed = api.client.get("/v1/compositions", headers=mesh["alice"]).json()
    feed = api.client.get("/v1/changes", params={"since": 2}, headers=mesh["alice"]).json()

    assert (first.status_code, first.json()["version"]) == (201, 1)
    assert (again.status_code, again.json()["version"], again.json()["created"]) == (200, 1, False)
    assert (second.status_code, second.json()["version"]) == (201, 2)
    assert latest["version"] == 2 and latest["document"]["version"] == 2 and latest["files"] == {}
    assert pinned == pinned2 and pinned["version"] == 1 and set(pinned["files"]) == {"router.safetensors"}
    assert pinned["router_type"] == "domain" and pinned["document"]["policy"] == {"top_k": 2}
    assert [(m["name"], m["version"], m["status"]) for m in pinned["members"]] == [
        ("law-expert", 1, "active"), ("med-expert", 1, "active")]
    assert [(c["name"], c["latest_version"], c["owner"]) for c in listed] == [("law-med", 2, "coordinator")]
    assert [e["kind"] for e in feed["events"]] == ["composition.stored", "composition.stored"]


def test_members_report_withdrawal_after_storing(api, mesh, tmp_path):
    api.store_composition(make_composition_dir(tmp_path / "c", "law-med", [("law-expert", 1), ("med-expert", 1)]),
                          mesh["coord"])

    api.client.post("/v1/experts/med-expert/withdraw", json={"reason": "opt-out"}, headers=mesh["bob"])
    got = api.client.get("/v1/compositions/law-med", headers=mesh["coord"]).json()

    assert not got["all_members_active"]
    assert [(m["name"], m["status"], m["status_reason"]) for m in got["members"]] == [
        ("law-expert", "active", ""), ("med-expert", "withdrawn", "opt-out")]


def test_refused_compositions(api, mesh, tmp_path):
    def store(name, members, **kw):
        return api.store_composition(make_composition_dir(tmp_path / name, name, members, **kw), mesh["coord"])

    api.client.post("/v1/experts/med-expert/withdraw", json={"reason": "x"}, headers=mesh["bob"])

    assert_error(store("unknown", [("nobody", 1)]), 404, "unknown_expert")
    assert_error(store("unknown-version", [("law-expert", 7)]), 404, "unknown_expert")
    assert_error(store("withdrawn", [("med-expert", 1)]), 410, "expert_withdrawn")
    assert_error(store("other-base", [("law-expert", 1)], base_fingerprint=OTHER_FP), 422, "base_mismatch")
    assert_error(store("dupes", [("law-expert", 1), ("law-expert", 1)]), 422, "invalid_package")
    assert_error(store("empty", []), 422, "invalid_package")
    assert_error(api.store_composition(make_composition_dir(tmp_path / "p", "by-owner", [("law-expert", 1)]),
                                       mesh["alice"]), 403, "permission_denied")
    doc = json.dumps({"name": "x", "router_type": "domain", "members": []}).encode()
    assert_error(api.upload("/v1/compositions/x/versions", raw_tar({"composition.json": doc}), mesh["coord"]),
                 422, "invalid_package")
    good = json.dumps({"name": "y", "router_type": "domain", "base_fingerprint": "f" * 64,
                       "members": [{"name": "law-expert", "version": 1}]}).encode()
    assert_error(api.upload("/v1/compositions/y/versions",
                            raw_tar({"composition.json": good, "router.pt": b"\x80\x04"}), mesh["coord"]),
                 422, "invalid_package")
    assert_error(api.upload("/v1/compositions/y/versions",
                            raw_tar({"composition.json": good, "router.safetensors": b"\x80\x04junk"}),
                            mesh["coord"]), 422, "invalid_package")
    assert_error(api.client.get("/v1/compositions/nothing", headers=mesh["coord"]), 404, "not_found")
    assert api.client.get("/v1/compositions", headers=mesh["coord"]).json() == []


def test_another_coordinator_cannot_overwrite(api, mesh, tmp_path):
    other = api.owner("coord-two", ("coordinate",))
    api.store_composition(make_composition_dir(tmp_path / "a", "law-only", [("law-expert", 1)]), mesh["coord"])

    r = api.store_composition(make_composition_dir(tmp_path / "b", "law-only", [("law-expert", 1)], router=False),
                              other)

    assert_error(r, 403, "permission_denied")


def test_download_composition_archive(api, mesh, tmp_path):
    api.store_composition(make_composition_dir(tmp_path / "c", "law-med", [("law-expert", 1)]), mesh["coord"])

    r = api.client.get("/v1/compositions/law-med/versions/latest/archive", headers=mesh["alice"])

    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        names = tf.getnames()
        doc = json.loads(tf.extractfile("composition.json").read())
    assert names == ["composition.json", "router.safetensors"] and doc["version"] == 1
