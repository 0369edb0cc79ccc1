"""CLI: every registry command has working --help; the owner flow through a live server; admin commands on
a local database; errors print one line and exit 1. SQLite only (the API paths run on PostgreSQL elsewhere)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.registry.conftest import ADMIN_TOKEN, make_expert_package

from cli.main import cli

COMMANDS = [["registry"], ["registry", "serve"], ["registry", "migrate"], ["registry", "create-owner"],
            ["registry", "create-token"], ["registry", "revoke-token"], ["registry", "audit"], ["login"],
            ["publish"], ["ls"], ["show"], ["pull"], ["withdraw"], ["restore"]]


@pytest.fixture
def db_url(tmp_path):  # overrides the conftest fixture: SQLite only here
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERTMESH_CONFIG", str(tmp_path / "cfg" / "config.json"))
    for k in ("EXPERTMESH_REGISTRY_URL", "EXPERTMESH_TOKEN", "EXPERTMESH_REGISTRY_DB",
              "EXPERTMESH_REGISTRY_DATA_DIR", "EXPERTMESH_REGISTRY_ADMIN_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output}"
    return result


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help(command):
    result = run(*command, "--help")
    assert "Usage:" in result.output and "Example" in result.output


def test_admin_commands_on_a_local_database(env, tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'admin.db'}", "--data-dir", str(tmp_path / "data")]

    migrated = run("registry", "migrate", *db)
    owner = run("registry", "create-owner", "st-marys", "--display-name", "St Mary's", *db)
    dup = run("registry", "create-owner", "st-marys", *db, ok=False)
    token = run("registry", "create-token", "st-marys", "--scope", "publish", "--scope", "read", *db)
    revoked = run("registry", "revoke-token", "1", *db)
    missing = run("registry", "revoke-token", "99", *db, ok=False)

    assert "schema revision 0001" in migrated.output and "created owner st-marys" in owner.output
    assert dup.exit_code == 1 and dup.output.startswith("error: owner 'st-marys' already exists")
    assert token.stdout.strip().splitlines()[-1].startswith("emr_")
    assert "revoked token 1" in revoked.output
    assert missing.exit_code == 1 and "token 99 does not exist" in missing.output


def test_owner_flow_through_a_live_server(env, live, tmp_path, settings, monkeypatch):
    db = ["--db", settings.resolved_database_url, "--data-dir", str(settings.data_dir)]
    run("registry", "create-owner", "alice", *db)
    token = run("registry", "create-token", "alice", "--scope", "publish", *db).stdout.strip().splitlines()[-1]
    pkg = make_expert_package(tmp_path / "pkg", "law-expert", tags=("law",))

    not_logged_in = run("ls", ok=False)
    login = run("login", live.url, "--token", token)
    published = run("publish", str(pkg))
    again = run("publish", str(pkg))
    listed = run("ls", "--domain", "law")
    listed_json = json.loads(run("ls", "--json").output)
    shown = run("show", "law-expert")
    shown_v = run("show", "law-expert@1")
    pulled = run("pull", "law-expert@1", "-o", str(tmp_path / "out"))
    withdrawn = run("withdraw", "law-expert", "--reason", "consent revoked")
    empty = run("ls")
    restored = run("restore", "law-expert", "--reason", "renewed")
    audit = run("registry", "audit", "--subject", "law-expert")
    unknown = run("show", "nobody", ok=False)
    bad_ref = run("show", "law-expert@x", ok=False)

    assert not_logged_in.exit_code == 1 and "no registry configured" in not_logged_in.output
    assert "as alice" in login.output and (tmp_path / "cfg" / "config.json").stat().st_mode & 0o777 == 0o600
    assert "published law-expert@1" in published.output and "already holds identical content" in again.output
    assert "law-expert@1" in listed.output and listed_json[0]["name"] == "law-expert"
    assert "owner alice" in shown.output and '"version": 1' in shown_v.output
    assert (tmp_path / "out" / "manifest.json").is_file() and "pulled law-expert" in pulled.output
    assert "withdrawn" in withdrawn.output and "no experts match" in empty.output and "active" in restored.output
    assert "expert.restored" in audit.output and "consent revoked" in audit.output
    assert unknown.exit_code == 1 and unknown.output == "error: expert 'nobody' is not in the registry\n"
    assert bad_ref.exit_code == 1 and bad_ref.output.startswith("error: ")

    # environment variables override the stored login
    monkeypatch.setenv("EXPERTMESH_TOKEN", "emr_wrong")
    overridden = run("ls", ok=False)
    assert overridden.exit_code == 1 and "unknown or revoked" in overridden.output


def test_admin_token_from_settings_via_client(live):
    from clients.registry_client import RegistryClient

    with RegistryClient(live.url, ADMIN_TOKEN) as admin:
        me = admin.whoami()
    assert me.is_admin and me.owner == "admin"
