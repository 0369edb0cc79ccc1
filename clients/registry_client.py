"""Typed Python client of the expertmesh registry (what a data owner, a coordinator and a server run).

    from clients.registry_client import RegistryClient
    with RegistryClient.from_config() as reg:          # url + token from env or `expertmesh login`
        print(reg.publish("runs/law-expert").version)
        for e in reg.list_experts(domain="law").items:
            print(e.name, e.latest_version, e.status)
        path = reg.pull("law-expert", dest="experts/law")   # verified package directory

Errors: every non-2xx answer is turned back into the library's error class in ONE place (``_raise_for``),
via ``expertmesh.errors.error_from_body``; a registry that cannot be reached raises ``RemoteError``.
Login: ``EXPERTMESH_REGISTRY_URL`` / ``EXPERTMESH_TOKEN`` override the config file (``EXPERTMESH_CONFIG``, else
``$XDG_CONFIG_HOME/expertmesh/config.json``, else ``~/.config/expertmesh/config.json``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

import httpx

from expertmesh.errors import ConfigError, IntegrityError, RemoteError, error_from_body
from expertmesh.fileio import atomic_directory, sha256_file, write_json_atomic

# --- typed results (field names are the JSON field names) --------------------------------------------------------


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    size: int


@dataclass(frozen=True)
class ExpertVersion:
    name: str
    owner: str
    version: int
    status: str
    version_status: str
    status_reason: str
    identity: str
    base_fingerprint: str
    manifest_sha256: str
    size_bytes: int
    archive_bytes: int
    files: dict[str, FileInfo]
    manifest: dict[str, Any]
    created_at: str

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "ExpertVersion":
        return _build(cls, {**d, "files": {k: FileInfo(**v) for k, v in d["files"].items()}})


@dataclass(frozen=True)
class ExpertSummary:
    name: str
    owner: str
    status: str
    status_reason: str
    latest_version: int
    domain_tags: list[str]
    description: str
    base_fingerprint: str
    updated_at: str


@dataclass(frozen=True)
class ExpertPage:
    items: list[ExpertSummary]
    total: int
    limit: int
    offset: int
    revision: int


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    owner: str
    status: str
    status_reason: str
    latest_version: int
    latest_active_version: Optional[int]
    domain_tags: list[str]
    created_at: str
    updated_at: str
    versions: list[ExpertVersion]


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: int
    created: bool
    identity: str
    revision: int
    status: str = "active"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class StatusResult:
    name: str
    version: Optional[int]
    status: str
    changed: bool
    revision: int


@dataclass(frozen=True)
class ChangeEvent:
    revision: int
    kind: str
    name: str
    version: Optional[int]
    at: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class ChangesPage:
    revision: int
    events: list[ChangeEvent]
    next_since: int


@dataclass(frozen=True)
class CompositionMember:
    name: str
    version: int
    status: str
    status_reason: str = ""


@dataclass(frozen=True)
class CompositionInfo:
    name: str
    owner: str
    version: int
    identity: str
    router_type: str
    base_fingerprint: str
    document_sha256: str
    size_bytes: int
    archive_bytes: int
    files: dict[str, FileInfo]
    document: dict[str, Any]
    members: list[CompositionMember]
    all_members_active: bool
    created_at: str

    @property
    def active_members(self) -> list[CompositionMember]:
        """Members a server may load now (withdrawn ones dropped: the owner's opt-out wins)."""
        return [m for m in self.members if m.status == "active"]


@dataclass(frozen=True)
class CompositionSummary:
    name: str
    owner: str
    latest_version: int
    router_type: str
    updated_at: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    ip: str
    action: str
    subject_type: str
    subject_name: str
    subject_version: Optional[int]
    detail: dict[str, Any]


@dataclass(frozen=True)
class Owner:
    name: str
    display_name: str
    created_at: str


@dataclass(frozen=True)
class TokenInfo:
    id: int
    owner: str
    label: str
    scopes: list[str]
    prefix: str
    created_at: str
    revoked_at: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)   # the secret, only in create_token's answer


@dataclass(frozen=True)
class WhoAmI:
    owner: str
    scopes: list[str]
    is_admin: bool
    token_id: Optional[int] = None


@dataclass(frozen=True)
class Health:
    status: str
    database: str
    revision: int
    base_fingerprint: Optional[str]


# --- login config -------------------------------------------------------------------------------------------------

def config_path() -> Path:
    if os.environ.get("EXPERTMESH_CONFIG"):
        return Path(os.environ["EXPERTMESH_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "expertmesh" / "config.json"


def load_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the expertmesh config {path}: {e}; fix or delete it") from None
    return data if isinstance(data, dict) else {}


def save_login(url: str, token: str, path: Path | None = None) -> Path:
    """Store url + token under the "registry" key (other keys of the file are kept), readable by the user only."""
    path = path or config_path()
    data = load_config(path)
    data["registry"] = {"url": url.rstrip("/"), "token": token}
    write_json_atomic(path, data, mode=0o600)
    return path


def resolve_login(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """Explicit arguments, then EXPERTMESH_REGISTRY_URL / EXPERTMESH_TOKEN, then the config file."""
    saved = load_config().get("registry") or {}
    url = url or os.environ.get("EXPERTMESH_REGISTRY_URL") or saved.get("url")
    token = token or os.environ.get("EXPERTMESH_TOKEN") or saved.get("token")
    if not url:
        raise ConfigError("no registry configured: run `expertmesh login URL --token TOKEN` or set "
                          "EXPERTMESH_REGISTRY_URL and EXPERTMESH_TOKEN")
    return url.rstrip("/"), token


# --- the client ---------------------------------------------------------------------------------------------------

class RegistryClient:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        headers = {"User-Agent": "expertmesh-registry-client/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_config(cls, url: str | None = None, token: str | None = None, **kw: Any) -> "RegistryClient":
        return cls(*resolve_login(url, token), **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport: the one place HTTP failures become library errors --
    def _raise_for(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        try:
            body = json.loads(r.read() or b"null")
        except ValueError:
            body = None
        raise error_from_body(body, f"registry answered HTTP {r.status_code} to {what}")

    @contextlib.contextmanager
    def _send(self, method: str, path: str, *, stream: bool = False, **kw: Any) -> Iterator[httpx.Response]:
        what = f"{method} {path}"
        try:
            if stream:
                with self._http.stream(method, path, **kw) as r:
                    self._raise_for(r, what)
                    yield r
                return
            r = self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise RemoteError(f"the registry at {self.url} did not answer {what} in time") from None
        except httpx.TransportError as e:
            raise RemoteError(f"cannot reach the registry at {self.url} ({what}): {e or type(e).__name__}; "
                              "an oversize upload can also make the server close the connection") from None
        self._raise_for(r, what)
        yield r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        with self._send(method, path, **kw) as r:
            return r.json()

    # -- service and accounts --
    def health(self) -> Health:
        return _build(Health, self._json("GET", "/healthz"))

    def whoami(self) -> WhoAmI:
        return _build(WhoAmI, self._json("GET", "/v1/whoami"))

    def create_owner(self, name: str, display_name: str = "") -> Owner:
        return _build(Owner, self._json("POST", "/v1/owners", json={"name": name, "display_name": display_name}))

    def list_owners(self) -> list[Owner]:
        return [_build(Owner, o) for o in self._json("GET", "/v1/owners")]

    def create_token(self, owner: str, scopes: list[str], label: str = "") -> TokenInfo:
        return _build(TokenInfo, self._json("POST", f"/v1/owners/{owner}/tokens",
                                            json={"scopes": list(scopes), "label": label}))

    def list_tokens(self, owner: str) -> list[TokenInfo]:
        return [_build(TokenInfo, t) for t in self._json("GET", f"/v1/owners/{owner}/tokens")]

    def revoke_token(self, token_id: int) -> TokenInfo:
        return _build(TokenInfo, self._json("DELETE", f"/v1/tokens/{int(token_id)}"))

    # -- uploads --
    def _upload(self, path: str, directory: str | Path) -> dict[str, Any]:
        from expertmesh.archive import pack_directory   # stdlib-only module shared with the server

        with tempfile.TemporaryFile() as tmp:
            sha, size = pack_directory(directory, tmp)
            tmp.seek(0)
            headers = {"X-Content-SHA256": sha, "Content-Type": "application/x-tar", "Content-Length": str(size)}
            return self._json("POST", path, content=_iter_file(tmp), headers=headers)

    # -- experts --
    def publish(self, package_dir: str | Path) -> PublishResult:
        """Upload a package directory; returns the new version, or the existing one for identical content."""
        manifest = _read_json(Path(package_dir) / "manifest.json", "an expert package")
        return _build(PublishResult, self._upload(f"/v1/experts/{manifest.get('name')}/versions", package_dir))

    def list_experts(self, *, domain: str | None = None, owner: str | None = None, status: str = "active",
                     q: str | None = None, limit: int = 100, offset: int = 0) -> ExpertPage:
        params = {k: v for k, v in dict(domain=domain, owner=owner, status=status, q=q, limit=limit,
                                        offset=offset).items() if v is not None}
        d = self._json("GET", "/v1/experts", params=params)
        return ExpertPage(items=[_build(ExpertSummary, i) for i in d["items"]], total=d["total"], limit=d["limit"],
                          offset=d["offset"], revision=d["revision"])

    def iter_experts(self, *, page_size: int = 500, **filters: Any) -> Iterator[ExpertSummary]:
        offset = 0
        while True:
            page = self.list_experts(limit=page_size, offset=offset, **filters)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def show(self, name: str) -> ExpertInfo:
        d = self._json("GET", f"/v1/experts/{name}")
        return _build(ExpertInfo, {**d, "versions": [ExpertVersion.parse(v) for v in d["versions"]]})

    def get_version(self, name: str, version: int | str = "latest") -> ExpertVersion:
        return ExpertVersion.parse(self._json("GET", f"/v1/experts/{name}/versions/{version}"))

    def pull(self, name: str, version: int | str = "latest", dest: str | Path | None = None, *,
             overwrite: bool = False, expected_fingerprint: str | None = None) -> Path:
        """Download and verify a package into ``dest`` (default ./name@version), atomically."""
        from expertmesh.expert.package import verify_package

        info = self.get_version(name, version)
        dest = Path(dest or f"{name}@{info.version}")
        with atomic_directory(dest, overwrite=overwrite) as tmp:
            doc_sha = self._download(f"/v1/experts/{name}/versions/{info.version}/archive", tmp)
            if doc_sha != info.manifest_sha256 or sha256_file(tmp / "manifest.json") != doc_sha:
                raise IntegrityError(f"downloaded manifest of {name}@{info.version} does not match the registry's")
            manifest = verify_package(tmp, expected_fingerprint=expected_fingerprint)
            if manifest.name != name or manifest.version != info.version:
                raise IntegrityError(f"downloaded package is {manifest.ref}, expected {name}@{info.version}")
        return dest

    def _download(self, path: str, into: Path) -> str:
        """Stream a tar next to ``into``, unpack it safely there; return the X-Document-SHA256 header."""
        from expertmesh.archive import safe_extract

        with tempfile.NamedTemporaryFile(dir=into.parent, prefix=".download-", suffix=".tar") as tmp:
            with self._send("GET", path, stream=True) as r:
                doc_sha = r.headers.get("x-document-sha256", "")
                expected = int(r.headers.get("content-length", "-1"))
                n = 0
                for block in r.iter_bytes(1 << 20):
                    tmp.write(block)
                    n += len(block)
            tmp.flush()
            if expected >= 0 and n != expected:
                raise IntegrityError(f"download of {path} stopped after {n} of {expected} bytes")
            safe_extract(tmp.name, into, allowed=_ALLOWED_DOWNLOAD, max_bytes=max(n, 1))
        return doc_sha

    def withdraw(self, name: str, reason: str, version: int | None = None) -> StatusResult:
        return _build(StatusResult, self._json("POST", f"/v1/experts/{name}/withdraw",
                                               json={"reason": reason, "version": version}))

    def restore(self, name: str, reason: str, version: int | None = None) -> StatusResult:
        return _build(StatusResult, self._json("POST", f"/v1/experts/{name}/restore",
                                               json={"reason": reason, "version": version}))

    # -- change feed and audit --
    def revision(self, etag: str | None = None) -> tuple[int | None, str]:
        """(revision, etag); revision is None when unchanged since ``etag`` (a 304, no body sent)."""
        headers = {"If-None-Match": etag} if etag else {}
        with self._send("GET", "/v1/revision", headers=headers) as r:
            if r.status_code == 304:
                return None, r.headers.get("etag", etag or "")
            return int(r.json()["revision"]), r.headers.get("etag", "")

    def changes(self, since: int = 0, limit: int = 500) -> ChangesPage:
        d = self._json("GET", "/v1/changes", params={"since": since, "limit": limit})
        return ChangesPage(revision=d["revision"], events=[_build(ChangeEvent, e) for e in d["events"]],
                           next_since=d["next_since"])

    def audit(self, subject: str | None = None, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        params = {k: v for k, v in dict(subject=subject, limit=limit, before=before).items() if v is not None}
        return [_build(AuditEntry, a) for a in self._json("GET", "/v1/audit", params=params)]

    # -- compositions --
    def publish_composition(self, directory: str | Path) -> PublishResult:
        doc = _read_json(Path(directory) / "composition.json", "a composition")
        return _build(PublishResult, self._upload(f"/v1/compositions/{doc.get('name')}/versions", directory))

    def list_compositions(self) -> list[CompositionSummary]:
        return [_build(CompositionSummary, c) for c in self._json("GET", "/v1/compositions")]

    def get_composition(self, name: str, version: int | str | None = None) -> CompositionInfo:
        d = self._json("GET", f"/v1/compositions/{name}" + (f"/versions/{version}" if version else ""))
        return _build(CompositionInfo, {**d, "files": {k: FileInfo(**v) for k, v in d["files"].items()},
                                        "members": [_build(CompositionMember, m) for m in d["members"]]})

    def pull_composition(self, name: str, version: int | str | None = None, dest: str | Path | None = None, *,
                         overwrite: bool = False) -> tuple[Path, CompositionInfo]:
        """Download a composition directory, checking every file against the registry's sha256."""
        info = self.get_composition(name, version)
        dest = Path(dest or f"{name}@{info.version}")
        with atomic_directory(dest, overwrite=overwrite) as tmp:
            doc_sha = self._download(f"/v1/compositions/{name}/versions/{info.version}/archive", tmp)
            expected = {**{f: fi.sha256 for f, fi in info.files.items()}, "composition.json": info.document_sha256}
            got = {p.name: sha256_file(p) for p in tmp.iterdir()}
            if got != expected or doc_sha != info.document_sha256:
                raise IntegrityError(f"downloaded composition {name}@{info.version} does not match the registry's")
        return dest, info


_ALLOWED_DOWNLOAD = {"manifest.json", "adapter_config.json", "adapter_model.safetensors", "signature.safetensors",
                     "README.md", "composition.json", "router.safetensors"}


def _iter_file(f: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    while block := f.read(chunk):
        yield block


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} is not {what}: {path.name} is missing") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data
