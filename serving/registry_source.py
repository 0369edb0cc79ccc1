"""The registry side of serving: pull a composition and its members, and poll what changed.

    source = CompositionSource(client, "clinic")        # a RevisionSource for the Watcher
    snap = source.poll(etag)                            # GET /v1/revision (If-None-Match); on change, the
                                                        # composition's members and their current status
    comp_dir, dirs, info = pull_composition(client, "clinic", None, cache_dir, fingerprint)

A member whose status is anything but ``active`` (withdrawn, missing) counts as withdrawn: the owner's
opt-out wins. Downloads are verified by the client (sha256 of every file, base fingerprint) and cached per
``name@version`` (registry versions are immutable), so a restart or a new composition version re-downloads
only what is new. ``clients`` is imported lazily: the core library does not depend on httpx.
"""
from __future__ import annotations

import logging
from pathlib import Path

from expertmesh.errors import PackageError
from expertmesh.serving.watcher import RegistrySnapshot

log = logging.getLogger("expertmesh.serving")


class CompositionSource:
    """RevisionSource over a registry composition (latest version, members' current status)."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name

    def poll(self, etag: str | None) -> RegistrySnapshot | None:
        revision, new_etag = self.client.revision(etag)
        if revision is None and etag is not None:
            return None                                   # 304: nothing changed anywhere in the registry
        info = self.client.get_composition(self.name)
        return RegistrySnapshot(
            etag=new_etag, revision=revision, composition_version=str(info.version),
            withdrawn=frozenset(m.name for m in info.members if m.status != "active"),
            detail={"active": sorted(m.name for m in info.members if m.status == "active")})


class MemberSource:
    """RevisionSource for a local composition directory whose members are published in a registry."""

    def __init__(self, client, members: dict[str, int | None]):
        self.client, self.members = client, dict(members)

    def poll(self, etag: str | None) -> RegistrySnapshot | None:
        revision, new_etag = self.client.revision(etag)
        if revision is None and etag is not None:
            return None
        withdrawn = set()
        for name, version in self.members.items():
            v = self.client.get_version(name, version or "latest")
            if v.status != "active":
                withdrawn.add(name)
        return RegistrySnapshot(etag=new_etag, revision=revision, withdrawn=frozenset(withdrawn))


def pull_composition(client, name: str, version: str | int | None, cache_dir: Path,
                     fingerprint: str | None) -> tuple[Path, dict[str, Path], object]:
    """Download (or reuse) composition ``name`` (latest when version is None) and its active members."""
    from expertmesh.expert.package import verify_package

    info = client.get_composition(name, version)
    comp_dir = cache_dir / "compositions" / f"{name}@{info.version}"
    if not (comp_dir / "composition.json").is_file():
        client.pull_composition(name, info.version, dest=comp_dir, overwrite=True)
    dirs: dict[str, Path] = {}
    for m in info.members:
        if m.status != "active":
            log.info("member %s@%s is %s: not downloaded, not served", m.name, m.version, m.status)
            continue
        dest = cache_dir / "experts" / f"{m.name}@{m.version}"
        if dest.is_dir():
            try:
                verify_package(dest, expected_fingerprint=fingerprint)
                dirs[m.name] = dest
                continue
            except PackageError:
                log.warning("cached package %s failed verification; downloading it again", dest)
        dirs[m.name] = client.pull(m.name, m.version, dest=dest, overwrite=True, expected_fingerprint=fingerprint)
    return comp_dir, dirs, info


def registry_builder(client, name: str, cache_dir: Path, base):
    """``prepare`` for the Watcher: download a newer version now, return the builder the engine runs."""
    from expertmesh.serving.composition import load_served

    def prepare(snapshot: RegistrySnapshot):
        comp_dir, dirs, info = pull_composition(client, name, snapshot.composition_version, cache_dir,
                                                base.fingerprint)
        return lambda: load_served(comp_dir, dirs, base, name=name, version=str(info.version), missing="drop")
    return prepare
