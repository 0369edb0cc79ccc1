"""The pages through FastAPI's TestClient: login and sessions, CSRF, escaping, 404 pages, permissions, search,
withdraw/restore, tokens, the composition heat map; and that the JSON API still answers JSON."""
from __future__ import annotations

from fastapi.testclient import TestClient
from tests.web.conftest import AUDIT, HOSTILE, csrf_of, login, publish_extra, store_audit


def withdraw_form(client, name: str, reason: str, version: str = ""):
    page = client.get(f"/ui/experts/{name}")
    return client.post(f"/ui/experts/{name}/withdraw",
                       data={"csrf": csrf_of(page.text), "reason": reason, "version": version})


def revision(site) -> int:
    return site.api.client.get("/v1/revision", headers=site.api.admin).json()["revision"]


def test_login_sets_an_httponly_samesite_strict_cookie(site):
    c = TestClient(site.api.app)
    page = c.get("/ui/login")
    r = c.post("/ui/login", data={"token": site.tokens["alice"], "csrf": csrf_of(page.text), "next": "/ui/account"},
               follow_redirects=False)

    cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("em_session=")][0]
    assert r.status_code == 303 and r.headers["location"] == "/ui/account"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert c.get("/ui/account").status_code == 200


def test_pages_need_a_login_and_logout_ends_it(site, as_owner):
    anon = TestClient(site.api.app)
    alice = as_owner("alice")

    redirect = anon.get("/ui/experts/law-expert", follow_redirects=False)
    out = alice.post("/ui/logout", data={"csrf": csrf_of(alice.get("/ui/").text)}, follow_redirects=False)
    after = alice.get("/ui/", follow_redirects=False)

    assert redirect.status_code == 303
    assert redirect.headers["location"] == "/ui/login?next=%2Fui%2Fexperts%2Flaw-expert"
    assert out.status_code == 303 and after.status_code == 303 and after.headers["location"].startswith("/ui/login")


def test_unknown_or_revoked_token_at_login_gets_a_clear_message(site):
    c = TestClient(site.api.app)
    tokens = site.api.client.get("/v1/owners/bob/tokens", headers=site.api.admin).json()
    site.api.client.delete(f"/v1/tokens/{tokens[0]['id']}", headers=site.api.admin)

    unknown = login(c, "emr_" + "x" * 43)
    revoked = login(c, site.tokens["bob"])
    garbage = login(c, "not a token at all " * 20)

    for r in (unknown, revoked, garbage):
        assert r.status_code == 401
        assert "That token is unknown, revoked or expired" in r.text
    assert c.get("/ui/", follow_redirects=False).status_code == 303


def test_revoking_the_token_ends_its_session(site, as_owner):
    bob = as_owner("bob")
    tokens = site.api.client.get("/v1/owners/bob/tokens", headers=site.api.admin).json()

    site.api.client.delete(f"/v1/tokens/{tokens[0]['id']}", headers=site.api.admin)
    r = bob.get("/ui/")

    assert r.status_code == 200 and "Your session ended" in r.text and 'action="/ui/login"' in r.text


def test_html_in_descriptions_and_reasons_is_escaped(site, as_owner, tmp_path):
    publish_extra(site, tmp_path, "note-expert", f"notes {HOSTILE}")
    alice = as_owner("alice")
    withdraw_form(alice, "law-expert", f"leak {HOSTILE}")

    pages = [alice.get(p).text for p in ("/ui/?status=all", "/ui/experts/note-expert", "/ui/experts/law-expert",
                                          "/ui/account", "/ui/compositions/clinic")]

    for html in pages:
        assert "<script>alert" not in html and "<b>bold</b>" not in html
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;"
    assert escaped in pages[0] and escaped in pages[1]
    assert "leak &lt;script&gt;" in pages[2] and "leak &lt;script&gt;" in pages[4]


def test_unknown_expert_composition_and_page_are_404_pages(site, as_owner):
    alice = as_owner("alice")

    expert = alice.get("/ui/experts/no-such-expert")
    comp = alice.get("/ui/compositions/no-such-comp")
    comp_version = alice.get("/ui/compositions/clinic?version=9")
    page = alice.get("/ui/nothing/here")
    bad_name = alice.get("/ui/experts/Bad%20Name")
    bad_offset = alice.get("/ui/?offset=minus")

    for r, text in ((expert, "no-such-expert"), (comp, "no-such-comp"), (comp_version, "clinic@9"),
                    (page, "/ui/nothing/here")):
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), r.text
        assert "404 · Not found" in r.text and text in r.text
    assert bad_name.status_code == 400 and "not a valid name" in bad_name.text
    assert bad_offset.status_code == 400 and "offset" in bad_offset.text


def test_post_without_or_with_a_wrong_csrf_token_is_refused(site, as_owner):
    alice = as_owner("alice")
    before = revision(site)

    missing = alice.post("/ui/experts/law-expert/withdraw", data={"reason": "forged"})
    wrong = alice.post("/ui/experts/law-expert/withdraw", data={"reason": "forged", "csrf": "0" * 32})
    other_site = alice.post("/ui/experts/law-expert/withdraw", headers={"Origin": "http://evil.example"},
                            data={"reason": "forged", "csrf": csrf_of(alice.get("/ui/").text)})
    login_forged = TestClient(site.api.app).post("/ui/login", data={"token": site.tokens["alice"]})

    proxied = alice.post("/ui/experts/law-expert/withdraw", headers={"Origin": "https://registry.example",
                                                                      "X-Forwarded-Host": "registry.example"},
                         data={"reason": "proxy host not trusted", "csrf": csrf_of(alice.get("/ui/").text)})

    for r in (missing, wrong, other_site, login_forged, proxied):
        assert r.status_code == 403 and ("CSRF" in r.text or "cross-site" in r.text), r.text
    assert revision(site) == before
    assert alice.get("/v1/experts/law-expert", headers={"Authorization": f"Bearer {site.tokens['alice']}"}) \
        .json()["status"] == "active"


def test_owner_withdraws_and_restores_from_the_page(site, as_owner):
    alice = as_owner("alice")
    before = revision(site)

    empty_reason = withdraw_form(alice, "law-expert", "   ")
    gone = withdraw_form(alice, "law-expert", "consent revoked")
    catalogue = alice.get("/ui/?status=withdrawn").text
    page = alice.get("/ui/experts/law-expert")
    restored = alice.post("/ui/experts/law-expert/restore",
                          data={"csrf": csrf_of(page.text), "reason": "consent back"})

    assert empty_reason.status_code == 400 and "a reason is required" in empty_reason.text
    assert gone.status_code == 200 and 'id="expert-status">withdrawn' in gone.text
    assert 'data-expert="law-expert"' in catalogue and "med-expert" not in catalogue
    assert 'id="restore"' in page.text and "consent revoked" in page.text
    assert restored.status_code == 200 and 'id="expert-status">active' in restored.text
    assert revision(site) == before + 2
    history = restored.text.split('id="history"')[1]
    assert history.index("consent back") < history.index("consent revoked")


def test_another_owner_sees_no_withdraw_button_and_cannot_post(site, as_owner):
    bob = as_owner("bob")
    page = bob.get("/ui/experts/law-expert")

    forced = bob.post("/ui/experts/law-expert/withdraw", data={"csrf": csrf_of(page.text), "reason": "mine"})

    assert page.status_code == 200 and 'id="withdraw"' not in page.text and "/withdraw" not in page.text
    assert forced.status_code == 403 and "belongs to another owner" in forced.text
    assert 'id="withdraw"' in bob.get("/ui/experts/med-expert").text


def test_catalogue_search_by_name_tag_owner_and_status(site, as_owner):
    alice = as_owner("alice")

    def names(query: str) -> list[str]:
        html = alice.get(f"/ui/?{query}").text
        return sorted(n for n in ("law-expert", "med-expert") if f'data-expert="{n}"' in html)

    assert names("") == ["law-expert", "med-expert"]
    assert names("q=med") == ["med-expert"]
    assert names("tag=legal") == ["law-expert"]
    assert names("owner=bob") == ["med-expert"]
    assert names("status=withdrawn") == []
    assert "v1" in alice.get("/ui/").text and "ffffffffffff" in alice.get("/ui/").text


def test_composition_page_shows_members_router_heat_map_and_share(site, as_owner):
    alice = as_owner("alice")

    page = alice.get("/ui/compositions/clinic").text
    withdraw_form(as_owner("bob"), "med-expert", "retired")
    after = alice.get("/ui/compositions/clinic").text

    assert "all members active" in page and "domain" in page and "<td>2</td>" in page   # router type, top-k
    heat = page.split('id="heatmap"')[1].split("</table>")[0]
    assert heat.count("<tr>") == 4 and 'class="heat-10">0.81</td>' in heat   # header + 3 domains; darkest = max
    share = page.split('id="share"')[1].split("</table>")[0]
    # public: (0.31 + 0.28 + 0.81) / 3 = 0.4667 of a total 0.4667 + 0.2567 + 0.2767 = 1.0 -> 46.7%
    assert "<td>public</td><td>46.7%</td>" in share and share.index("med-expert") < share.index("law-expert")
    assert "some members withdrawn" in after and "retired" in after


def test_account_page_issues_scoped_tokens_and_revokes_them(site, as_owner):
    alice = as_owner("alice")
    csrf = csrf_of(alice.get("/ui/account").text)

    issued = alice.post("/ui/tokens", data={"csrf": csrf, "label": "ci <i>bot</i>", "scopes": ["read"]})
    wider = alice.post("/ui/tokens", data={"csrf": csrf, "scopes": ["coordinate"]})
    admin = alice.post("/ui/tokens", data={"csrf": csrf, "scopes": ["admin"]})
    forged = alice.post("/ui/tokens", data={"scopes": ["read"]})
    secret = issued.text.split('id="issued-secret">')[1].split("<")[0]
    new_client = TestClient(site.api.app)
    new_login = login(new_client, secret)
    new_id = [t for t in alice.get("/v1/owners/alice/tokens",
                                   headers={"Authorization": f"Bearer {site.tokens['alice']}"}).json()
              if t["label"] == "ci <i>bot</i>"][0]["id"]
    revoked = alice.post(f"/ui/tokens/{new_id}/revoke", data={"csrf": csrf})
    bob = as_owner("bob")
    bob_csrf = csrf_of(bob.get("/ui/").text)
    bob_revokes = bob.post("/ui/tokens/1/revoke", data={"csrf": bob_csrf})
    bad_id = bob.post("/ui/tokens/one/revoke", data={"csrf": bob_csrf})

    assert issued.status_code == 200 and secret.startswith("emr_") and "ci &lt;i&gt;bot&lt;/i&gt;" in issued.text
    assert wider.status_code == 403 and "only have scopes you have" in wider.text
    assert admin.status_code == 403 and forged.status_code == 403
    assert new_login.status_code == 200 and 'id="withdraw"' not in new_client.get("/ui/experts/law-expert").text
    assert revoked.status_code == 200 and new_client.get("/ui/").url.path == "/ui/login"
    assert bob_revokes.status_code == 403 and bad_id.status_code == 400 and "must be a number" in bad_id.text
    actions = revoked.text.split('id="audit"')[1]
    assert "token.revoked" in actions and "token.created" in actions and "expert.published" in actions


def test_owner_page_withdraws_and_restores_its_experts(site, as_owner):
    alice = as_owner("alice")
    page = alice.get("/ui/account").text
    row = page.split('data-expert="law-expert"')[1].split("</tr>")[0]

    done = alice.post("/ui/experts/law-expert/withdraw", data={"csrf": csrf_of(page), "reason": "from my page"})
    after = alice.get("/ui/account").text.split('data-expert="law-expert"')[1].split("</tr>")[0]

    assert 'action="/ui/experts/law-expert/withdraw"' in row and 'data-confirm="Withdraw law-expert?"' in row
    assert done.status_code == 200 and "withdrawn" in after and "from my page" in after
    assert 'action="/ui/experts/law-expert/restore"' in after


def test_owner_page_shows_only_own_data(site, as_owner):
    bob = as_owner("bob").get("/ui/account").text
    admin = TestClient(site.api.app)
    login(admin, "admin-secret-for-tests-0123456789")

    mine = bob.split('id="my-experts"')[1].split("</table>")[0]
    audit = bob.split('id="audit"')[1]
    assert "med-expert" in mine and "law-expert" not in mine
    assert "law-expert" not in audit and "alice" not in audit
    everything = admin.get("/ui/account").text
    assert "law-expert" in everything and "med-expert" in everything and "create-token" in everything


def test_audit_section_of_a_manifest_is_a_table(site, as_owner):
    store_audit(site.api, "law-expert", 1, AUDIT)

    page = as_owner("bob").get("/ui/experts/law-expert").text
    audit = page.split("<h4>Audit</h4>")[1].split("<h4>")[0]

    assert "<th>base</th><th>expert</th>" in audit
    assert "<th>mia_auc</th><td>0.51</td><td>0.58</td>" in audit and "<th>prefix_tokens</th><td>32</td>" in audit
    assert "<th>expert_loss</th><td>2.871</td>" in page   # held-out metrics
    assert "<h4>Audit</h4>" not in as_owner("bob").get("/ui/experts/med-expert").text


def test_next_parameter_cannot_leave_the_site(site):
    c = TestClient(site.api.app)
    page = c.get("/ui/login?next=//evil.example/x")

    r = c.post("/ui/login", data={"token": site.tokens["alice"], "csrf": csrf_of(page.text),
                                  "next": "https://evil.example/"}, follow_redirects=False)

    assert 'value="/ui/"' in page.text and r.headers["location"] == "/ui/"


def test_json_api_is_unchanged(site):
    c = site.api.client

    assert c.get("/v1/experts").status_code == 401 and c.get("/v1/experts").json()["error"]["code"]
    assert c.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert "/ui/" not in str(c.get("/openapi.json").json()["paths"])
    assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
