"""Through a real uvicorn server on 127.0.0.1 with the typed client: the owner/coordinator/server flows, error
classes rebuilt client-side, a hung-up upload over a real socket, and 16 clients publishing at once."""
from __future__ import annotations

import concurrent.futures as cf
import socket
import time

import pytest
from tests.registry.conftest import ADMIN_TOKEN, OTHER_FP, blobs_and_rows, make_composition_dir, make_expert_package, pack

from clients.registry_client import RegistryClient
from expertmesh.errors import (
    BaseMismatchError, ExpertWithdrawnError, PackageError, PayloadTooLargeError,
    PermissionDeniedError, RemoteError, UnknownExpertError,
)
from expertmesh.expert.package import verify_package


def tokens(url: str, *owners: tuple[str, list[str]]) -> list[str]:
    with RegistryClient(url, ADMIN_TOKEN) as admin:
        out = []
        for name, scopes in owners:
            if name not in {o.name for o in admin.list_owners()}:
                admin.create_owner(name)
            out.append(admin.create_token(name, scopes).token)
        return out


def test_typed_client_end_to_end(live, tmp_path):
    alice_t, coord_t, server_t = tokens(live.url, ("alice", ["publish"]), ("coord", ["coordinate"]),
                                        ("server", ["read"]))
    alice = RegistryClient(live.url, alice_t)
    coord = RegistryClient(live.url, coord_t)
    server = RegistryClient(live.url, server_t)
    pkg = make_expert_package(tmp_path / "pkg", "law-expert", tags=("law",))

    published = alice.publish(pkg)
    republished = alice.publish(pkg)
    rev, etag = server.revision()
    unchanged, _ = server.revision(etag)
    page = server.list_experts(domain="law")
    info = server.show("law-expert")
    pulled = server.pull("law-expert", dest=tmp_path / "pulled")
    stored = coord.publish_composition(make_composition_dir(tmp_path / "comp", "law-only", [("law-expert", 1)]))
    comp_dir, comp = server.pull_composition("law-only", dest=tmp_path / "comp-pulled")
    withdrawn = alice.withdraw("law-expert", "consent revoked")
    rev2, _ = server.revision(etag)
    feed = server.changes(since=rev)
    comp_after = server.get_composition("law-only", 1)

    assert (published.ref, published.created, republished.created) == ("law-expert@1", True, False)
    assert rev == 1 and unchanged is None
    assert [e.name for e in page.items] == ["law-expert"] and page.items[0].domain_tags == ["law"]
    assert info.versions[0].manifest["version"] == 1
    assert verify_package(pulled).version == 1
    assert stored.version == 1 and comp.members[0].status == "active"
    assert sorted(p.name for p in comp_dir.iterdir()) == ["composition.json", "router.safetensors"]
    assert withdrawn.changed and rev2 == 3
    assert [(e.kind, e.name) for e in feed.events] == [("composition.stored", "law-only"),
                                                       ("expert.withdrawn", "law-expert")]
    assert comp_after.active_members == [] and not comp_after.all_members_active
    with pytest.raises(ExpertWithdrawnError):
        server.pull("law-expert", 1, dest=tmp_path / "again")
    assert not (tmp_path / "again").exists()
    assert [a.action for a in alice.audit(subject="law-expert")] == ["expert.withdrawn", "expert.published"]
    assert alice.audit()[0].ip == "127.0.0.1"
    for c in (alice, coord, server):
        c.close()


def test_errors_come_back_as_library_classes(live, tmp_path):
    alice_t, bob_t = tokens(live.url, ("alice", ["publish"]), ("bob", ["publish"]))
    alice, bob = RegistryClient(live.url, alice_t), RegistryClient(live.url, bob_t)
    alice.publish(make_expert_package(tmp_path / "a", "law-expert"))

    with pytest.raises(UnknownExpertError) as unknown:
        alice.show("nobody")
    with pytest.raises(PermissionDeniedError):
        bob.withdraw("law-expert", "mine now")
    with pytest.raises(BaseMismatchError):
        alice.publish(make_expert_package(tmp_path / "b", "other-expert", base_fingerprint=OTHER_FP))
    (tmp_path / "a" / "notes.txt").write_text("hi")
    with pytest.raises(PackageError):
        alice.publish(tmp_path / "a")
    with pytest.raises(RemoteError):
        RegistryClient("http://127.0.0.1:9", alice_t, timeout=2).health()

    assert unknown.value.code == "unknown_expert" and unknown.value.detail == {"name": "nobody"}


def test_oversize_and_wrong_checksum_through_the_server(live, tmp_path):
    alice_t, = tokens(live.url, ("alice", ["publish"]))
    pkg = make_expert_package(tmp_path / "p", "law-expert")
    (pkg / "README.md").write_bytes(b"x" * (live.app.state.registry.settings.max_upload_bytes + 1))
    import httpx

    body, sha = pack(make_expert_package(tmp_path / "q", "law-expert"))
    with RegistryClient(live.url, alice_t) as alice:
        with pytest.raises(PayloadTooLargeError):
            alice.publish(pkg)
    r = httpx.post(f"{live.url}/v1/experts/law-expert/versions", content=body,
                   headers={"Authorization": f"Bearer {alice_t}", "X-Content-SHA256": "1" * 64})
    assert r.status_code == 400 and r.json()["error"]["code"] == "integrity_error"
    assert blobs_and_rows(live.app.state.registry) == ([], 0, [])


def test_hung_up_upload_over_a_socket_leaves_nothing(live, tmp_path):
    alice_t, = tokens(live.url, ("alice", ["publish"]))
    body, sha = pack(make_expert_package(tmp_path / "p", "law-expert"))
    head = (f"POST /v1/experts/law-expert/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {alice_t}\r\nX-Content-SHA256: {sha}\r\n"
            f"Content-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n\r\n").encode()

    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)   # let the server spool the first half
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and blobs_and_rows(live.app.state.registry) != ([], 0, []):
        time.sleep(0.05)

    assert blobs_and_rows(live.app.state.registry) == ([], 0, [])
    with RegistryClient(live.url, alice_t) as alice, pytest.raises(UnknownExpertError):
        alice.show("law-expert")


def test_sixteen_concurrent_publishers_lose_nothing(live, tmp_path):
    """16 threads publish 16 distinct versions of one name, 16 more re-publish one identical package and
    16 publish new names, all at once: versions 1..16 exactly, one version for the duplicate, 16 new experts."""
    alice_t, = tokens(live.url, ("alice", ["publish"]))
    distinct = [make_expert_package(tmp_path / f"d{i}", "shared-expert", seed=i) for i in range(16)]
    same = make_expert_package(tmp_path / "same", "dup-expert", seed=99)
    fresh = [make_expert_package(tmp_path / f"n{i}", f"new-expert-{i}", seed=i) for i in range(16)]
    jobs = [(p, "distinct") for p in distinct] + [(same, "same")] * 16 + [(p, "fresh") for p in fresh]

    def publish(job):
        with RegistryClient(live.url, alice_t) as c:
            return job[1], c.publish(job[0])

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(publish, jobs))

    with RegistryClient(live.url, alice_t) as c:
        shared = c.show("shared-expert")
        dup = c.show("dup-expert")
        names = [e.name for e in c.iter_experts()]
        feed = c.changes(limit=5000)
    got = sorted(r.version for kind, r in results if kind == "distinct")
    assert got == list(range(1, 17)) and [v.version for v in shared.versions] == list(range(1, 17))
    assert len({v.identity for v in shared.versions}) == 16
    assert [v.version for v in dup.versions] == [1]
    assert sum(r.created for kind, r in results if kind == "same") == 1
    assert {r.version for kind, r in results if kind == "same"} == {1}
    assert len(names) == 18
    assert [e.revision for e in feed.events] == list(range(1, 34))   # 16 + 1 + 16 publishes, no gap
