"""Registry settings: one typed object, validated where each field is declared, built from env or CLI flags.

Environment (all optional):
    EXPERTMESH_REGISTRY_DB                 SQLAlchemy URL (default: sqlite file under the data dir)
    EXPERTMESH_REGISTRY_DATA_DIR           data dir (default: ~/.local/share/expertmesh/registry)
    EXPERTMESH_REGISTRY_ARTIFACT_DIR       content-addressed store (default: <data dir>/artifacts)
    EXPERTMESH_REGISTRY_BASE_FINGERPRINT   declared base; uploads trained on another base are refused
    EXPERTMESH_REGISTRY_ADMIN_TOKEN        bootstrap admin token (compared in constant time, never stored)
    EXPERTMESH_REGISTRY_MAX_UPLOAD_MB      upload size cap in MiB (default 512)
    EXPERTMESH_REGISTRY_TRUST_FORWARDED    "1": take the client address from X-Forwarded-For (behind a proxy)
    EXPERTMESH_REGISTRY_AUDIT_POLICY       JSON AuditPolicy (registry/audit_policy.py): refuse unaudited experts
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from expertmesh.errors import ConfigError
from expertmesh.validate import check_int
from registry.audit_policy import AuditPolicy

MIB = 1024 * 1024
_ENV = "EXPERTMESH_REGISTRY_"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "expertmesh" / "registry"


@dataclass
class RegistrySettings:
    data_dir: Path = field(default_factory=_default_data_dir)
    database_url: str | None = None           # None: sqlite:///<data_dir>/registry.db
    artifact_dir: Path | None = None          # None: <data_dir>/artifacts
    base_fingerprint: str | None = None       # None: accept any base, record it per version
    admin_token: str | None = None
    max_upload_bytes: int = 512 * MIB         # a LoRA r=16 q,k,v,o expert of SmolLM2-135M is ~7 MiB fp32
    trust_forwarded_for: bool = False
    migrate_on_startup: bool = True
    db_pool_size: int = 10                    # + db_pool_size overflow; the server threadpool has 40 threads
    list_limit_max: int = 1000
    audit_policy: AuditPolicy = field(default_factory=AuditPolicy)   # default: audits optional, no limits

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.artifact_dir is not None:
            self.artifact_dir = Path(self.artifact_dir).expanduser()
        if self.database_url is not None and ("://" not in str(self.database_url)):
            raise ConfigError(f"database_url={self.database_url!r} is not a SQLAlchemy URL "
                              "(e.g. sqlite:////var/lib/registry.db or postgresql+psycopg://user@host/db)")
        if self.base_fingerprint is not None and (not isinstance(self.base_fingerprint, str)
                                                  or len(self.base_fingerprint) < 16):
            raise ConfigError(f"base_fingerprint={self.base_fingerprint!r} is not a fingerprint "
                              "(use the value `expertmesh base fingerprint` prints, or leave it unset)")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ConfigError("admin_token must be at least 16 characters (e.g. `python -c "
                              "'import secrets; print(secrets.token_urlsafe(32))'`)")
        check_int("max_upload_bytes", self.max_upload_bytes, lo=1024)
        check_int("db_pool_size", self.db_pool_size, lo=1, hi=200)
        check_int("list_limit_max", self.list_limit_max, lo=1)
        if isinstance(self.audit_policy, dict):
            self.audit_policy = AuditPolicy(**self.audit_policy)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def scratch_dir(self) -> Path:
        """Where uploads are spooled and unpacked (kept beside the store so renames stay on one filesystem)."""
        return self.data_dir / "tmp"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "RegistrySettings":
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        if env.get(_ENV + "DATA_DIR"):
            kw["data_dir"] = Path(env[_ENV + "DATA_DIR"])
        if env.get(_ENV + "DB"):
            kw["database_url"] = env[_ENV + "DB"]
        if env.get(_ENV + "ARTIFACT_DIR"):
            kw["artifact_dir"] = Path(env[_ENV + "ARTIFACT_DIR"])
        if env.get(_ENV + "BASE_FINGERPRINT"):
            kw["base_fingerprint"] = env[_ENV + "BASE_FINGERPRINT"]
        if env.get(_ENV + "ADMIN_TOKEN"):
            kw["admin_token"] = env[_ENV + "ADMIN_TOKEN"]
        if env.get(_ENV + "MAX_UPLOAD_MB"):
            try:
                kw["max_upload_bytes"] = int(float(env[_ENV + "MAX_UPLOAD_MB"]) * MIB)
            except ValueError:
                raise ConfigError(f"{_ENV}MAX_UPLOAD_MB={env[_ENV + 'MAX_UPLOAD_MB']!r} must be a number") from None
        if env.get(_ENV + "TRUST_FORWARDED"):
            kw["trust_forwarded_for"] = env[_ENV + "TRUST_FORWARDED"] in {"1", "true", "yes"}
        if env.get(_ENV + "AUDIT_POLICY"):
            kw["audit_policy"] = AuditPolicy.from_json(env[_ENV + "AUDIT_POLICY"])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def with_(self, **changes: Any) -> "RegistrySettings":
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """Resolved settings without secrets (logged at startup, saved beside benchmark results)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "admin_token"}
        out["database_url"] = _redact(self.resolved_database_url)
        out["artifact_dir"] = str(self.resolved_artifact_dir)
        out["data_dir"] = str(self.data_dir)
        out["admin_token"] = "set" if self.admin_token else "unset"
        out["audit_policy"] = self.audit_policy.to_dict()
        return out


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url
