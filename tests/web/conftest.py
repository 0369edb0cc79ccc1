"""Fixtures of the page tests: a registry on SQLite with two owners, a coordinator, experts and a composition that
stores an evaluation; a logged-in TestClient per owner; and (browser tests) a live server plus Chromium."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from tests.registry.conftest import (
    ADMIN_TOKEN, BASE_FP, Api, LiveServer, make_composition_dir, make_expert_package,
)

EVALUATION = {"entries": ["public", "law-expert", "med-expert"],
              "by_domain": {"law": [0.31, 0.62, 0.07], "medicine": [0.28, 0.05, 0.67], "code": [0.81, 0.1, 0.09]}}
HOSTILE = "<script>alert('x')</script><b>bold</b>"


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


@dataclass
class Seeded:
    api: Api
    tokens: dict[str, str]       # owner -> secret


METRICS = {"heldout_blocks": 16, "base_loss": 3.412, "expert_loss": 2.871, "gain": 0.541}
AUDIT = {"seed": 0, "prefix_tokens": 32,
         "base": {"extraction_rate": 0.0, "mia_auc": 0.51, "canary_exposure": 1.2},
         "expert": {"extraction_rate": 0.03, "mia_auc": 0.58, "canary_exposure": 3.4}}


def with_metrics(pkg: Path, metrics: dict) -> Path:
    """Held-out metrics in the manifest, as expert training records them (re-finalised, so still valid)."""
    import json

    from expertmesh.expert.manifest import ExpertManifest
    from expertmesh.expert.package import finalize_manifest

    manifest = ExpertManifest.from_dict(json.loads((pkg / "manifest.json").read_text()))
    manifest.metrics = metrics
    finalize_manifest(pkg, manifest)
    return pkg


def store_audit(api: Api, name: str, version: int, audit: dict) -> None:
    """Put an ``audit`` section into a stored manifest, as the expert audit (issue 15) will publish it."""
    from sqlalchemy import select

    from registry.models import Expert, ExpertVersion

    with api.registry.db.write() as s:
        row = s.scalar(select(ExpertVersion).join(Expert, Expert.id == ExpertVersion.expert_id)
                       .where(Expert.name == name, ExpertVersion.version == version))
        row.manifest = {**row.manifest, "audit": audit}


def seed(api: Api, tmp: Path) -> Seeded:
    """alice owns law-expert (HTML in its description), bob owns med-expert, coord stores clinic@1."""
    tokens = {}
    for name, scopes in (("alice", ["publish"]), ("bob", ["publish"]), ("coord", ["coordinate"])):
        headers = api.owner(name, tuple(scopes))
        tokens[name] = headers["Authorization"].split(" ", 1)[1]
    auth = {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
    law = make_expert_package(tmp / "law", "law-expert", owner="alice", tags=("law", "legal"),
                              description="Statutes, case law and contracts (EU and US)")
    r1 = api.publish(with_metrics(law, METRICS), auth["alice"])
    r2 = api.publish(make_expert_package(tmp / "med", "med-expert", owner="bob", tags=("medicine",), seed=1),
                     auth["bob"])
    assert r1.status_code == 201 and r2.status_code == 201, (r1.text, r2.text)
    comp = make_composition_dir(tmp / "clinic", "clinic", [("law-expert", 1), ("med-expert", 1)],
                                extra={"provenance": {"evaluation": EVALUATION}, "description": "law + medicine"})
    r3 = api.store_composition(comp, auth["coord"])
    assert r3.status_code == 201, r3.text
    return Seeded(api=api, tokens=tokens)


def publish_extra(site: Seeded, tmp: Path, name: str, description: str, tags: tuple[str, ...] = ("notes",)) -> None:
    """One more expert of alice's (the escaping tests give it HTML in its description)."""
    r = site.api.publish(make_expert_package(tmp / name, name, owner="alice", tags=tags, description=description,
                                             seed=7), {"Authorization": f"Bearer {site.tokens['alice']}"})
    assert r.status_code == 201, r.text


def web_settings(tmp_path: Path):
    from registry.settings import RegistrySettings

    return RegistrySettings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'registry.db'}",
                            base_fingerprint=BASE_FP, admin_token=ADMIN_TOKEN, max_upload_bytes=256 * 1024,
                            db_pool_size=4)


@pytest.fixture
def site(tmp_path) -> Iterator[Seeded]:
    from fastapi.testclient import TestClient

    from registry.app import create_app

    app = create_app(web_settings(tmp_path))
    with TestClient(app) as client:
        yield seed(Api(client, app), tmp_path / "pkgs")


def login(client, secret: str, next_url: str = "/ui/"):
    """Log ``client`` in through the form; returns the final response (after the redirect)."""
    page = client.get("/ui/login")
    return client.post("/ui/login", data={"token": secret, "csrf": csrf_of(page.text), "next": next_url})


@pytest.fixture
def as_owner(site):
    """A fresh logged-in TestClient for ``owner``, sharing the seeded app."""
    from fastapi.testclient import TestClient

    clients = []

    def make(owner: str):
        c = TestClient(site.api.app)
        clients.append(c)
        r = login(c, site.tokens[owner])
        assert r.status_code == 200, r.text
        return c

    yield make
    for c in clients:
        c.close()


# --- browser -------------------------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    import shutil

    return shutil.which("chromium") or (("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Debian's Chromium driven by Playwright (no browser download: executable_path is the apt binary)."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver; scripts/setup-browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python playwright package is not installed (scripts/setup-browser.sh)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=exe, headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def live_site(tmp_path) -> Iterator[tuple[LiveServer, Seeded]]:
    """A seeded registry behind a real uvicorn on 127.0.0.1."""
    from fastapi.testclient import TestClient

    from registry.app import create_app

    app = create_app(web_settings(tmp_path))
    with LiveServer(app) as server, TestClient(app) as client:
        yield server, seed(Api(client, app), tmp_path / "pkgs")


@pytest.fixture
def tab(chromium):
    """A new tab with no cookies (cookies are per host, not port, so earlier tests' sessions would leak)."""
    chromium.clear_cookies()
    page = chromium.new_page()
    page.set_default_timeout(30_000)   # generous: two shared cores; waits are on events, not on the clock
    try:
        yield page
    finally:
        page.close()
