"""Assemble a server from settings: base, composition (registry or local), engine, watcher, app.

    client = RegistryClient.from_config(...) if needs_registry(settings) else None   # the caller's client
    engine, watcher = build_server(settings, client=client)   # loads the base once, pulls what is needed
    app = create_app(settings, engine, watcher=watcher)       # serving.app

Two modes:
  registry  ``composition`` is a name: the latest version and its active members are pulled (verified,
            cached under ``cache_dir``); the watcher applies withdrawals and loads new versions live.
  local     ``composition`` is a directory; members come from ``experts_dir`` (one subdirectory per
            member). With ``registry_url`` the members' status is still polled, so withdrawals apply.
Before serving, one synchronous poll fixes the withdrawn set, so the first request already honours it.
The registry client is handed in by the caller (the CLI, a test), so this module imports no client package.
"""
from __future__ import annotations

import logging
from pathlib import Path

from expertmesh.errors import ConfigError
from expertmesh.serving.composition import load_served
from expertmesh.serving.engine import Engine
from expertmesh.serving.settings import ServeSettings
from expertmesh.serving.watcher import Watcher

log = logging.getLogger("expertmesh.serving")


def default_cache_dir() -> Path:
    from expertmesh.base import cache_root

    return cache_root() / "serving"


def needs_registry(settings: ServeSettings) -> bool:
    """Whether ``settings`` need a registry client: a composition name always, a directory with a registry URL.

    A path-like name that is no directory is refused here, before anyone builds a client or loads a base."""
    if _local_dir(settings) is not None:
        return bool(settings.registry_url)
    if "/" in settings.composition or settings.composition.startswith("."):
        raise ConfigError(f"composition directory {settings.composition} does not exist")
    return True


def build_server(settings: ServeSettings, *, experts_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, base=None, client=None) -> tuple[Engine, Watcher | None]:
    """Engine and watcher for ``settings``; ``client`` is the registry client (see ``needs_registry``)."""
    from expertmesh.base import load_base

    if not settings.composition:
        raise ConfigError("composition is required: a registry composition name or a local composition directory")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    needs_registry(settings)          # refuses a path-like name that is no directory
    local = _local_dir(settings)
    if local is not None:
        engine, source, prepare = _local(settings, local, experts_dir, lambda: base or load_base(
            settings.base, dtype=settings.dtype), client)
    else:
        if client is None:                # fails fast, before loading a base
            raise ConfigError(f"composition {settings.composition} is a registry name: a registry client is needed")
        engine, source, prepare = _registry(settings, cache, base or load_base(settings.base, dtype=settings.dtype),
                                            client)
    watcher = None
    if source is not None:
        watcher = Watcher(source, engine, interval_s=settings.poll_interval_s,
                          stale_after_s=settings.stale_after_s, prepare=prepare)
        watcher.poll_once()       # the withdrawn set is known before the first request
    return engine, watcher


def _local_dir(settings: ServeSettings) -> Path | None:
    local = Path(settings.composition).expanduser()
    return local if local.is_dir() else None


def _local(settings: ServeSettings, path: Path, experts_dir, get_base, client):
    from expertmesh.compose.spec import read_composition

    experts = Path(experts_dir) if experts_dir else path.parent / "experts"
    if not experts.is_dir():
        raise ConfigError(f"no expert directory {experts}: pass --experts DIR (one subdirectory per member)")
    base = get_base()

    def builder():
        return load_served(path, experts, base)

    engine = Engine(builder(), settings, builder=builder)
    if client is None:
        log.warning("no registry: serving %s without live withdrawal", path)
        return engine, None, None
    from serving.registry_source import MemberSource

    spec, _ = read_composition(path)
    return engine, MemberSource(client, {m.name: m.version for m in spec.members}), None


def _registry(settings: ServeSettings, cache: Path, base, client):
    from serving.registry_source import CompositionSource, pull_composition, registry_builder

    name = settings.composition
    comp_dir, dirs, info = pull_composition(client, name, None, cache, base.fingerprint)

    def builder():
        return load_served(comp_dir, dirs, base, name=name, version=str(info.version), missing="drop")

    engine = Engine(builder(), settings, builder=builder)
    return engine, CompositionSource(client, name), registry_builder(client, name, cache, base)
