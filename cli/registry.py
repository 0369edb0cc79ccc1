"""Registry commands: ``expertmesh registry ...`` runs and administers the service; ``expertmesh login|publish|ls|
show|pull|withdraw|restore`` are the owner side (through the typed client).

Web-framework and SQL imports happen inside the commands, so ``expertmesh --help`` stays fast and the core
library never loads them.
"""
from __future__ import annotations

import json
from typing import Any

import click

from expertmesh.validate import split_ref

_SCOPES = click.Choice(["read", "publish", "coordinate", "admin"])


def _settings(db: str | None = None, data_dir: str | None = None, **kw: Any):  # noqa: ANN202
    from registry.settings import RegistrySettings

    return RegistrySettings.from_env(database_url=db, data_dir=data_dir, **kw)


def _client():  # noqa: ANN202
    from clients.registry_client import RegistryClient

    return RegistryClient.from_config()


def _echo_json(obj: Any) -> None:
    import dataclasses

    def conv(o: Any) -> Any:
        return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else o

    def default(o: Any) -> str:   # the wire's datetimes, back to the ISO 8601 text they came as
        return o.isoformat() if hasattr(o, "isoformat") else str(o)

    data = [conv(o) for o in obj] if isinstance(obj, list) else conv(obj)
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=default))


_db_opts = [
    click.option("--db", default=None, help="SQLAlchemy URL (env EXPERTMESH_REGISTRY_DB; default sqlite file in the "
                                            "data dir), e.g. postgresql+psycopg://user@host/registry"),
    click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                 help="Data dir: SQLite file, artifacts, scratch (env EXPERTMESH_REGISTRY_DATA_DIR)."),
]


def _with_db(f):  # noqa: ANN001, ANN202
    for opt in reversed(_db_opts):
        f = opt(f)
    return f


@click.group("registry")
def registry_group() -> None:
    """Run and administer the registry service (experts, versions, owners, tokens, audit).

    Example: expertmesh registry serve --db sqlite:///registry.db --port 8700
    """


@registry_group.command("serve")
@_with_db
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 only behind a proxy).")
@click.option("--port", default=8700, show_default=True, type=int)
@click.option("--base-fingerprint", default=None, help="Refuse experts trained on another base "
                                                       "(env EXPERTMESH_REGISTRY_BASE_FINGERPRINT).")
@click.option("--max-upload-mb", default=None, type=float, help="Upload cap in MiB (default 512).")
@click.option("--log-level", default="info", show_default=True)
def serve_cmd(db, data_dir, host, port, base_fingerprint, max_upload_mb, log_level) -> None:  # noqa: ANN001
    """Serve the registry HTTP API (migrates the database first). OpenAPI at /openapi.json.

    The admin token comes from EXPERTMESH_REGISTRY_ADMIN_TOKEN (optional: `create-token --scope admin` too).

    Example: EXPERTMESH_REGISTRY_ADMIN_TOKEN=$(openssl rand -hex 24) expertmesh registry serve --port 8700
    """
    import uvicorn

    from registry.app import create_app
    from registry.settings import MIB
    from registry.startup import build_checked

    settings = _settings(db, data_dir, base_fingerprint=base_fingerprint,
                         max_upload_bytes=int(max_upload_mb * MIB) if max_upload_mb else None)
    build_checked(settings).close()     # database, migrations, store: one `error:` line within seconds
    click.echo(f"registry on http://{host}:{port} (db {settings.describe()['database_url']})", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


@registry_group.command("migrate")
@_with_db
def migrate_cmd(db, data_dir) -> None:  # noqa: ANN001
    """Apply the database migrations (the server also does it at startup).

    Example: expertmesh registry migrate --db postgresql+psycopg://postgres@127.0.0.1/registry
    """
    from registry.db import current_revision
    from registry.startup import build_checked

    reg = build_checked(_settings(db, data_dir).with_(migrate_on_startup=True))
    try:
        click.echo(f"database at schema revision {current_revision(reg.db.engine)}")
    finally:
        reg.close()


@registry_group.command("gc")
@_with_db
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option("--grace-s", default=3600.0, show_default=True, type=click.FloatRange(0),
              help="Keep unreferenced blobs younger than this (a publish in flight stores blobs before its row).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gc_cmd(db, data_dir, dry_run, grace_s, as_json) -> None:  # noqa: ANN001
    """Remove blobs no version references and spools of dead uploads from the artifact store.

    Example: expertmesh registry gc --dry-run
    """
    from registry.gc import collect
    from registry.startup import build_checked

    reg = build_checked(_settings(db, data_dir))
    try:
        report = collect(reg, dry_run=dry_run, grace_s=grace_s)
    finally:
        reg.close()
    if as_json:
        _echo_json(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report.unreferenced)} unreferenced blob(s) and {len(report.spools)} stale spool(s), "
               f"{report.bytes_freed} bytes; kept {report.blobs_referenced} referenced and {report.kept_young} "
               f"young blob(s)")


def _local_admin(db: str | None, data_dir: str | None):  # noqa: ANN202
    from registry.auth import ADMIN, Principal
    from registry.startup import build_checked

    reg = build_checked(_settings(db, data_dir).with_(migrate_on_startup=True))
    import getpass
    import socket

    who = Principal(owner_id=None, owner_name="admin", scopes=frozenset({ADMIN}),
                    ip=f"local:{getpass.getuser()}@{socket.gethostname()}"[:64])
    return reg, who


@registry_group.command("create-owner")
@_with_db
@click.argument("name")
@click.option("--display-name", default="", help="Human name of the organisation.")
def create_owner_cmd(db, data_dir, name, display_name) -> None:  # noqa: ANN001
    """Create an owner in the registry database (run on the registry host).

    Example: expertmesh registry create-owner st-marys --display-name "St Mary's Hospital"
    """
    from registry import auth

    reg, who = _local_admin(db, data_dir)
    try:
        with reg.db.write() as s:
            owner = auth.create_owner(s, who, name, display_name)
            click.echo(f"created owner {owner.name}")
    finally:
        reg.close()


@registry_group.command("create-token")
@_with_db
@click.argument("owner")
@click.option("--scope", "scopes", multiple=True, type=_SCOPES, required=True,
              help="read, publish, coordinate or admin (repeatable).")
@click.option("--label", default="", help="What the token is for.")
def create_token_cmd(db, data_dir, owner, scopes, label) -> None:  # noqa: ANN001
    """Issue an API token for OWNER and print it once (only its sha256 is stored).

    Example: expertmesh registry create-token st-marys --scope publish --label laptop
    """
    from registry import auth

    reg, who = _local_admin(db, data_dir)
    try:
        with reg.db.write() as s:
            token, secret = auth.create_token(s, who, owner, list(scopes), label)
            click.echo(f"token {token.id} for {owner} ({token.scopes}); store it now, it is not shown again:",
                       err=True)
            click.echo(secret)
    finally:
        reg.close()


@registry_group.command("revoke-token")
@_with_db
@click.argument("token_id", type=int)
def revoke_token_cmd(db, data_dir, token_id) -> None:  # noqa: ANN001
    """Revoke a token by its id (effective on the next request).

    Example: expertmesh registry revoke-token 7
    """
    from registry import auth

    reg, who = _local_admin(db, data_dir)
    try:
        with reg.db.write() as s:
            auth.revoke_token(s, who, token_id)
        click.echo(f"revoked token {token_id}")
    finally:
        reg.close()


@registry_group.command("audit")
@click.option("--subject", default=None, help="Only entries about this expert/owner/composition name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit_cmd(subject, limit, as_json) -> None:  # noqa: ANN001
    """Show the audit log through the registry API with your login (admins: everything; owners: their own
    experts and account), newest first.

    Example: expertmesh registry audit --subject law-expert --limit 20
    """
    with _client() as c:
        rows = c.audit(subject=subject, limit=limit)
    if as_json:
        _echo_json(rows)
        return
    for a in rows:
        ver = f"@{a.subject_version}" if a.subject_version else ""
        extra = f" reason={a.detail['reason']!r}" if "reason" in a.detail else ""
        click.echo(f"{a.at.isoformat()}  {a.actor:<16} {a.ip:<15} {a.action:<18} {a.subject_type} "
                   f"{a.subject_name}{ver}{extra}")


# --- owner side -----------------------------------------------------------------------------------------------------

@click.command("login")
@click.argument("url")
@click.option("--token", prompt=True, hide_input=True, help="API token (prompted if omitted).")
@click.option("--profile", default=None,
              help="Save as this named profile (several owners on one machine); use it with "
                   "`expertmesh --profile NAME ...` or EXPERTMESH_PROFILE=NAME.")
def login_cmd(url, token, profile) -> None:  # noqa: ANN001
    """Check URL + token against the registry and store them (EXPERTMESH_CONFIG or ~/.config/expertmesh).

    Example: expertmesh login http://127.0.0.1:8700 --token emr_...
    Example: expertmesh login http://127.0.0.1:8700 --token emr_... --profile clinic
    """
    from clients.registry_client import RegistryClient, save_login

    with RegistryClient(url, token) as c:
        me = c.whoami()
    path = save_login(url, token, profile=profile)
    where = f"profile {profile!r} in {path}" if profile else str(path)
    click.echo(f"logged in to {url} as {me.owner} (scopes: {', '.join(me.scopes)}); saved to {where}")


@click.command("publish")
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--require-audit", is_flag=True, help="Refuse to upload a package whose manifest has no audit.")
def publish_cmd(package_dir, require_audit) -> None:  # noqa: ANN001
    """Publish an expert package (from `expertmesh expert train`) as a new immutable version.

    Re-publishing identical content returns the existing version.

    Example: expertmesh publish runs/law-expert --require-audit
    """
    if require_audit:
        from expertmesh.errors import AuditPolicyError
        from expertmesh.expert.package import verify_package

        if not verify_package(package_dir).audit:
            raise AuditPolicyError(f"{package_dir} has no leakage audit: run `expertmesh expert audit --expert "
                                   f"{package_dir} --data CORPUS` first")
    with _client() as c:
        r = c.publish(package_dir)
    click.echo(f"published {r.ref}" if r.created else f"{r.ref} already holds identical content; nothing new")


@click.command("ls")
@click.option("--domain", default=None, help="Only experts with this domain tag.")
@click.option("--owner", default=None, help="Only this owner's experts.")
@click.option("--status", default="active", show_default=True, type=click.Choice(["active", "withdrawn", "all"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(domain, owner, status, as_json) -> None:  # noqa: ANN001
    """List experts in the registry.

    Example: expertmesh ls --domain law --status all
    """
    with _client() as c:
        items = list(c.iter_experts(domain=domain, owner=owner, status=status))
    if as_json:
        _echo_json(items)
        return
    if not items:
        click.echo("no experts match")
    for e in items:
        click.echo(f"{e.name + '@' + str(e.latest_version):<40} {e.owner:<20} {e.status:<10} {','.join(e.domain_tags)}")


@click.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(ref, as_json) -> None:  # noqa: ANN001
    """Show an expert (all versions) or one version NAME@VERSION with its manifest.

    Example: expertmesh show law-expert@2
    """
    name, version = split_ref(ref)
    with _client() as c:
        obj = c.get_version(name, version) if version else c.show(name)
    if as_json:
        _echo_json(obj)
        return
    if version:
        click.echo(f"{obj.name}@{obj.version}  owner {obj.owner}  {obj.status}  {obj.size_bytes} bytes")
        click.echo(json.dumps(obj.manifest, indent=2, sort_keys=True))
        if obj.manifest.get("audit"):
            from cli.expert_audit import format_audit

            click.echo("leakage audit:\n" + format_audit(obj.manifest["audit"]))
        return
    reason = f" ({obj.status_reason})" if obj.status_reason else ""
    click.echo(f"{obj.name}  owner {obj.owner}  {obj.status}{reason}  tags {','.join(obj.domain_tags)}")
    for v in obj.versions:
        why = f" ({v.status_reason})" if v.status_reason and v.version_status != "active" else ""
        click.echo(f"  @{v.version:<4} {v.status:<10} {v.created_at.isoformat()}  {v.size_bytes} bytes  "
                   f"{v.identity[:12]}{why}")


@click.command("pull")
@click.argument("ref")
@click.option("-o", "--out", "out", default=None, type=click.Path(file_okay=False),
              help="Target directory (default ./NAME@VERSION).")
@click.option("--overwrite", is_flag=True, help="Replace an existing target directory.")
def pull_cmd(ref, out, overwrite) -> None:  # noqa: ANN001
    """Download NAME or NAME@VERSION into a verified package directory (atomic: complete or absent).

    Example: expertmesh pull law-expert@2 -o experts/law
    """
    name, version = split_ref(ref)
    with _client() as c:
        path = c.pull(name, version or "latest", out, overwrite=overwrite)
    click.echo(f"pulled {name} into {path}")


def _status_cmd(withdraw: bool) -> click.Command:
    verb = "withdraw" if withdraw else "restore"

    @click.command(verb)
    @click.argument("ref")
    @click.option("--reason", required=True, help="Why (recorded in the audit log and the change feed).")
    def cmd(ref, reason) -> None:  # noqa: ANN001
        name, version = split_ref(ref)
        with _client() as c:
            r = (c.withdraw if withdraw else c.restore)(name, reason, version)
        target = f"{name}@{version}" if version else name
        click.echo(f"{target}: {r.status}" + ("" if r.changed else " (unchanged)") + f", registry revision {r.revision}")

    cmd.help = (
        "Withdraw an expert (all versions) or NAME@VERSION: the owner's global opt-out; no composition or server "
        "may use it from now on.\n\nExample: expertmesh withdraw law-expert --reason 'consent revoked'"
        if withdraw else
        "Restore a withdrawn expert or NAME@VERSION (opt back in).\n\n"
        "Example: expertmesh restore law-expert --reason 'consent renewed'")
    return cmd


def register(group: click.Group) -> None:
    group.add_command(registry_group)
    for cmd in (login_cmd, publish_cmd, ls_cmd, show_cmd, pull_cmd, _status_cmd(True), _status_cmd(False)):
        group.add_command(cmd)
