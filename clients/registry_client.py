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
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import httpx

from expertmesh.errors import ConfigError, IntegrityError, RemoteError, error_from_body
from expertmesh.wire import (
    AuditEntryPublic, ChangesPage, CompositionPublishResult, CompositionSummary, CompositionVersionPublic, ExpertList,
    ExpertPublic, ExpertSummary, ExpertVersionPublic, Health, OwnerPublic, PublishResult, StatusResult, TokenIssued,
    TokenPublic, WhoAmI, from_json,
)
from expertmesh.fileio import atomic_directory, sha256_file, write_json_atomic

# --- typed results: the dataclasses of expertmesh.wire, which the registry's response models are derived from ---
# (field names are the JSON field names; wire.from_json builds nested results and ignores fields it does not know)


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


def save_login(url: str, token: str, path: Path | None = None, profile: str | None = None) -> Path:
    """Store url + token under the "registry" key, or under "profiles"/PROFILE (several owners on one machine);
    other keys of the file are kept; the file is readable by the user only."""
    path = path or config_path()
    data = load_config(path)
    entry = {"url": url.rstrip("/"), "token": token}
    if profile:
        data.setdefault("profiles", {})[profile] = entry
    else:
        data["registry"] = entry
    write_json_atomic(path, data, mode=0o600)
    return path


def resolve_login(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """Explicit arguments, then EXPERTMESH_REGISTRY_URL / EXPERTMESH_TOKEN, then the config file (its profile
    EXPERTMESH_PROFILE, set by ``expertmesh --profile NAME``, else its default login)."""
    config = load_config()
    profile = os.environ.get("EXPERTMESH_PROFILE")
    if profile:
        profiles = config.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"no login profile {profile!r} (saved: {sorted(profiles) or 'none'}); run "
                              f"`expertmesh login URL --token TOKEN --profile {profile}`")
        saved = profiles[profile]
    else:
        saved = config.get("registry") or {}
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
        return from_json(Health, self._json("GET", "/healthz"))

    def whoami(self) -> WhoAmI:
        return from_json(WhoAmI, self._json("GET", "/v1/whoami"))

    def create_owner(self, name: str, display_name: str = "") -> OwnerPublic:
        body = {"name": name, "display_name": display_name}
        return from_json(OwnerPublic, self._json("POST", "/v1/owners", json=body))

    def list_owners(self) -> list[OwnerPublic]:
        return [from_json(OwnerPublic, o) for o in self._json("GET", "/v1/owners")]

    def create_token(self, owner: str, scopes: list[str], label: str = "") -> TokenIssued:
        """A new token; ``.token`` is its secret, shown only in this answer."""
        return from_json(TokenIssued, self._json("POST", f"/v1/owners/{owner}/tokens",
                                                 json={"scopes": list(scopes), "label": label}))

    def list_tokens(self, owner: str) -> list[TokenPublic]:
        return [from_json(TokenPublic, t) for t in self._json("GET", f"/v1/owners/{owner}/tokens")]

    def revoke_token(self, token_id: int) -> TokenPublic:
        return from_json(TokenPublic, self._json("DELETE", f"/v1/tokens/{int(token_id)}"))

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
        return from_json(PublishResult, self._upload(f"/v1/experts/{manifest.get('name')}/versions", package_dir))

    def list_experts(self, *, domain: str | None = None, owner: str | None = None, status: str = "active",
                     q: str | None = None, limit: int = 100, offset: int = 0) -> ExpertList:
        params = {k: v for k, v in dict(domain=domain, owner=owner, status=status, q=q, limit=limit,
                                        offset=offset).items() if v is not None}
        return from_json(ExpertList, self._json("GET", "/v1/experts", params=params))

    def iter_experts(self, *, page_size: int = 500, **filters: Any) -> Iterator[ExpertSummary]:
        offset = 0
        while True:
            page = self.list_experts(limit=page_size, offset=offset, **filters)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def show(self, name: str) -> ExpertPublic:
        return from_json(ExpertPublic, self._json("GET", f"/v1/experts/{name}"))

    def get_version(self, name: str, version: int | str = "latest") -> ExpertVersionPublic:
        return from_json(ExpertVersionPublic, self._json("GET", f"/v1/experts/{name}/versions/{version}"))

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
        return from_json(StatusResult, self._json("POST", f"/v1/experts/{name}/withdraw",
                                                  json={"reason": reason, "version": version}))

    def restore(self, name: str, reason: str, version: int | None = None) -> StatusResult:
        return from_json(StatusResult, self._json("POST", f"/v1/experts/{name}/restore",
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
        return from_json(ChangesPage, self._json("GET", "/v1/changes", params={"since": since, "limit": limit}))

    def audit(self, subject: str | None = None, limit: int = 100, before: int | None = None) -> list[AuditEntryPublic]:
        params = {k: v for k, v in dict(subject=subject, limit=limit, before=before).items() if v is not None}
        return [from_json(AuditEntryPublic, a) for a in self._json("GET", "/v1/audit", params=params)]

    # -- compositions --
    def publish_composition(self, directory: str | Path) -> CompositionPublishResult:
        doc = _read_json(Path(directory) / "composition.json", "a composition")
        answer = self._upload(f"/v1/compositions/{doc.get('name')}/versions", directory)
        return from_json(CompositionPublishResult, answer)

    def list_compositions(self) -> list[CompositionSummary]:
        return [from_json(CompositionSummary, c) for c in self._json("GET", "/v1/compositions")]

    def get_composition(self, name: str, version: int | str | None = None) -> CompositionVersionPublic:
        d = self._json("GET", f"/v1/compositions/{name}" + (f"/versions/{version}" if version else ""))
        return from_json(CompositionVersionPublic, d)

    def pull_composition(self, name: str, version: int | str | None = None, dest: str | Path | None = None, *,
                         overwrite: bool = False) -> tuple[Path, CompositionVersionPublic]:
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
