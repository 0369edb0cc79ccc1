"""The pages in a real browser: Playwright driving Debian's Chromium against a live registry on 127.0.0.1.

Run: ``bash scripts/setup-browser.sh && bash scripts/test.sh -m browser``. Skipped (with the reason) where Chromium
or playwright is missing. With EXPERTMESH_SCREENSHOT_DIR=docs the screenshot test also writes the README's PNGs.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.browser


def log_in(tab, url: str, secret: str) -> None:
    tab.goto(f"{url}/ui/")
    assert "/ui/login" in tab.url
    tab.fill("input[name=token]", secret)
    tab.click("button:has-text('Log in')")
    tab.wait_for_url(f"{url}/ui/")


def api_revision(url: str, secret: str) -> int:
    r = httpx.get(f"{url}/v1/revision", headers={"Authorization": f"Bearer {secret}"})
    r.raise_for_status()
    return r.json()["revision"]


def status_in_catalogue(tab, url: str, name: str) -> str:
    tab.goto(f"{url}/ui/?status=all")
    return tab.locator(f"tr[data-expert='{name}'] .status").inner_text()


def test_log_in_browse_search_and_withdraw(live_site, tab, tmp_path):
    from tests.web.conftest import HOSTILE, publish_extra

    server, site = live_site
    url, alice = server.url, site.tokens["alice"]
    publish_extra(site, tmp_path, "note-expert", f"notes {HOSTILE}")
    before = api_revision(url, alice)

    log_in(tab, url, alice)
    rows_all = tab.locator("#experts tbody tr[data-expert]").count()
    tab.fill("input[name=q]", "law")
    tab.click("button:has-text('Search')")
    tab.wait_for_url("**/ui/?q=law**")
    found = [tab.locator("#experts tbody tr[data-expert]").nth(i).get_attribute("data-expert")
             for i in range(tab.locator("#experts tbody tr[data-expert]").count())]
    tab.click("a:has-text('law-expert')")
    tab.wait_for_url(f"{url}/ui/experts/law-expert")
    tab.goto(f"{url}/ui/experts/note-expert")
    description = tab.locator("section.version td").first.inner_text()
    tab.go_back()
    messages: list[str] = []
    tab.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    tab.fill("input[name=reason]", "consent revoked by the clinic")
    tab.click("#withdraw")
    tab.wait_for_selector("#expert-status:has-text('withdrawn')")
    history = tab.locator("#history").inner_text()

    assert rows_all == 3 and found == ["law-expert"]
    assert "<script>alert('x')</script>" in description          # shown as text, not run
    assert messages and messages[0].startswith("Withdraw law-expert?")
    assert "consent revoked by the clinic" in history
    assert status_in_catalogue(tab, url, "law-expert") == "withdrawn"
    assert status_in_catalogue(tab, url, "med-expert") == "active"
    assert api_revision(url, alice) == before + 1


def test_dismissing_the_confirmation_withdraws_nothing(live_site, tab):
    server, site = live_site
    log_in(tab, server.url, site.tokens["alice"])
    before = api_revision(server.url, site.tokens["alice"])

    tab.goto(f"{server.url}/ui/experts/law-expert")
    tab.once("dialog", lambda d: d.dismiss())
    tab.fill("input[name=reason]", "changed my mind")
    tab.click("#withdraw")
    tab.goto(f"{server.url}/ui/experts/law-expert")   # a new navigation: the form was never sent

    assert tab.locator("#expert-status").inner_text() == "active"
    assert api_revision(server.url, site.tokens["alice"]) == before


def test_another_owner_sees_no_withdraw_button(live_site, tab):
    server, site = live_site
    log_in(tab, server.url, site.tokens["bob"])

    tab.goto(f"{server.url}/ui/experts/law-expert")
    on_law = tab.locator("#withdraw").count()
    tab.goto(f"{server.url}/ui/experts/med-expert")
    on_med = tab.locator("#withdraw").count()

    assert on_law == 0 and on_med == 1


def test_forged_posts_without_the_csrf_token_are_refused(live_site, tab, tmp_path):
    server, site = live_site
    url = server.url
    log_in(tab, url, site.tokens["alice"])
    before = api_revision(url, site.tokens["alice"])

    # Same origin, session cookie sent, no CSRF field.
    status = tab.evaluate("""async (url) => {
        const r = await fetch(url + '/ui/experts/law-expert/withdraw', {method: 'POST',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'reason=forged'});
        return r.status; }""", url)
    # Another site's page that auto-submits a withdraw form at the registry (different host: localhost).
    evil = tmp_path / "evil.html"
    evil.write_text(f"<form id=f method=post action='{url}/ui/experts/law-expert/withdraw'>"
                    "<input name=reason value=forged></form><script>document.getElementById('f').submit()</script>")
    with tab.expect_navigation():
        tab.goto(evil.as_uri())
    landed = tab.url

    assert status == 403
    assert "/ui/login" in landed or "403" in tab.title() or "Not allowed" in tab.content()
    assert api_revision(url, site.tokens["alice"]) == before
    tab.goto(f"{url}/ui/experts/law-expert")
    assert tab.locator("#expert-status").inner_text() == "active"


def test_composition_page_and_screenshots(live_site, tab, tmp_path):
    from tests.web.conftest import AUDIT, store_audit

    server, site = live_site
    url = server.url
    from tests.web.conftest import publish_extra

    store_audit(site.api, "law-expert", 1, AUDIT)
    publish_extra(site, tmp_path, "tax-expert", "Tax rulings 2019-2024 (superseded)", tags=("law", "tax"))
    alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {site.tokens['alice']}"})
    for path, reason in (("law-expert/withdraw", "a client asked to review its documents"),
                         ("law-expert/restore", "review done: documents cleared"),
                         ("tax-expert/withdraw", "superseded by law-expert")):
        assert alice.post(f"/v1/experts/{path}", json={"reason": reason}).status_code == 200
    log_in(tab, url, site.tokens["alice"])
    shots = {}

    tab.goto(f"{url}/ui/?status=all")
    shots["catalogue"] = tab.screenshot(path=str(tmp_path / "web-catalogue.png"), full_page=True)
    tab.goto(f"{url}/ui/experts/law-expert")
    audit_rows = tab.locator("table.audit tr").count()
    shots["expert"] = tab.screenshot(path=str(tmp_path / "web-expert.png"), full_page=True)
    tab.goto(f"{url}/ui/compositions/clinic")
    cells = tab.locator("#heatmap tbody td").count()
    darkest = tab.locator("#heatmap td.heat-10").inner_text()
    members = tab.locator("#members-status").inner_text()
    shots["composition"] = tab.screenshot(path=str(tmp_path / "web-composition.png"), full_page=True)

    assert audit_rows >= 4 and cells == 9 and darkest == "0.81" and members == "all members active"
    for png in shots.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    out = os.environ.get("EXPERTMESH_SCREENSHOT_DIR")
    if out:
        for name in ("web-catalogue.png", "web-expert.png", "web-composition.png"):
            shutil.copy(tmp_path / name, Path(out) / name)
