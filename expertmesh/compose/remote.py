"""Compositions and their experts from a registry, through the typed client (passed in, never imported here,
so the core library stays free of HTTP code).

    from clients.registry_client import RegistryClient
    with RegistryClient.from_config() as reg:
        rt = load_remote_runtime(reg, "clinic")          # latest version; withdrawn members are dropped

Pulled packages are cached under ``<EXPERTMESH_CACHE>/registry/{experts,compositions}/<name>@<version>`` and
re-verified (checksums) on every reuse.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from expertmesh.errors import PackageError


def registry_cache(cache: str | Path | None = None) -> Path:
    from expertmesh.base import cache_root

    return Path(cache) if cache is not None else cache_root() / "registry"


def pull_expert_cached(client, name: str, version: int, cache: str | Path | None = None) -> Path:
    """A verified local copy of expert ``name@version`` (pulled once, checked on reuse)."""
    from expertmesh.expert.package import verify_package

    dest = registry_cache(cache) / "experts" / f"{name}@{version}"
    if (dest / "manifest.json").is_file():
        try:
            verify_package(dest)
            return dest
        except PackageError:
            pass                                   # corrupted cache entry: pull again
    return Path(client.pull(name, version, dest, overwrite=True))


def pull_active_experts(client, names: list[str] | None = None, *, domain: str | None = None,
                        cache: str | Path | None = None) -> tuple[dict[str, Path], dict[str, int]]:
    """Latest active version of each named expert (default: every active expert, optionally of one domain)."""
    if names is None:
        names = [e.name for e in client.iter_experts(status="active", domain=domain)]
    dirs, versions = {}, {}
    for n in names:
        v = client.get_version(n, "latest")       # the latest *active* version; a withdrawn expert raises
        dirs[n] = pull_expert_cached(client, n, v.version, cache)
        versions[n] = v.version
    return dirs, versions


def fetch_composition(client, name: str, version: int | None = None, *, cache: str | Path | None = None):
    """(composition dir, member name -> expert dir for the active members, withdrawn member names, info)."""
    info = client.get_composition(name, version)
    dest = registry_cache(cache) / "compositions" / f"{name}@{info.version}"
    if not (dest / "composition.json").is_file():
        dest, info = client.pull_composition(name, info.version, dest, overwrite=True)
    dirs, withdrawn = {}, set()
    for m in info.members:
        if m.status != "active":
            withdrawn.add(m.name)
            continue
        dirs[m.name] = pull_expert_cached(client, m.name, m.version, cache)
    return Path(dest), dirs, withdrawn, info


def load_remote_runtime(client, name: str, version: int | None = None, *, base=None,
                        cache: str | Path | None = None):
    """A CompositionRuntime for a registry composition; members withdrawn by their owners are left out."""
    from expertmesh.compose.runtime import CompositionRuntime

    comp_dir, dirs, withdrawn, info = fetch_composition(client, name, version, cache=cache)
    rt = CompositionRuntime.load(comp_dir, dirs, base, missing="drop")
    if withdrawn:
        rt.notes.append(f"members {sorted(withdrawn)} are withdrawn by their owners and not loaded")
    return rt


def build_from_registry(client, name: str, router_type: str = "domain", *, names: list[str] | None = None,
                        domain: str | None = None, cache: str | Path | None = None, publish: bool = True,
                        out: str | Path | None = None, **opts: Any):
    """Pull the active experts, build the composition, store it in the registry. Returns (spec, publish result)."""
    from expertmesh.compose.build import build_composition

    overwrite = bool(opts.pop("overwrite", False))
    dirs, versions = pull_active_experts(client, names, domain=domain, cache=cache)
    if not dirs:
        raise PackageError("the registry has no active experts" + (f" of domain {domain!r}" if domain else ""))
    with tempfile.TemporaryDirectory(prefix="compose-") as tmp:
        target = Path(out) if out is not None else Path(tmp) / name
        spec, _ = build_composition(name, dirs, router_type, out=target, versions=versions,
                                    overwrite=out is not None and overwrite,
                                    provenance={"source": "registry", "registry": getattr(client, "url", None)},
                                    **opts)
        result = client.publish_composition(target) if publish else None
    return spec, result
