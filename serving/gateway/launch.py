"""Assemble the vLLM backend: composition (registry or local directory), router, worker pool, watcher.

    opts = GatewaySettings(workers=["http://127.0.0.1:8200"], max_adapters=4)
    engine, watcher = build_gateway(settings, opts, client=client)      # no base weights are loaded
    app = create_app(settings, engine, watcher=watcher)                  # serving.app, unchanged

Same two modes as serving/launch.py (a registry composition name, or a local directory with an optional
registry polled for withdrawals), the same download cache and the same Watcher. What differs: only the
base's tokenizer is loaded (chat template and token ids, as the native server computes them), and the base
directory's recorded fingerprint must be the composition's, so the gateway never routes for another base.
The workers read expert packages from the paths the gateway gives them: they must see the gateway's files
(one machine, or a shared volume mounted at the same path).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from expertmesh.errors import BaseMismatchError, ConfigError
from expertmesh.serving.settings import ServeSettings
from expertmesh.serving.watcher import Watcher
from expertmesh.validate import check_float, check_int
from serving.gateway.engine import GatewayComposition, GatewayEngine, GatewayOptions
from serving.gateway.pool import WorkerPool
from serving.gateway.router import GatewayRouter

log = logging.getLogger("expertmesh.gateway")


@dataclass
class GatewaySettings:
    workers: list[str] = field(default_factory=list)   # vLLM worker base URLs
    max_adapters: int = 4                  # adapters held per worker (match its --max-loras)
    worker_model: str = "base"             # the worker's --served-model-name for the base
    worker_timeout_s: float = 60.0         # longest wait for a worker's next chunk
    connect_timeout_s: float = 5.0
    health_interval_s: float = 2.0
    worker_api_key: str | None = None

    def __post_init__(self) -> None:
        if not self.workers:
            raise ConfigError("workers: the vllm backend needs at least one --worker URL (a vLLM OpenAI server)")
        bad = [u for u in self.workers if not str(u).startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"workers: {bad} must start with http:// or https://")
        if len(set(self.workers)) != len(self.workers):
            raise ConfigError(f"workers: {self.workers} lists a worker twice")
        check_int("max_adapters", self.max_adapters, lo=1, hi=1024)
        check_float("worker_timeout_s", self.worker_timeout_s, lo=0.0, lo_open=True)
        check_float("connect_timeout_s", self.connect_timeout_s, lo=0.0, lo_open=True)
        check_float("health_interval_s", self.health_interval_s, lo=0.0, lo_open=True, hi=60.0)


def build_gateway(settings: ServeSettings, opts: GatewaySettings, *, experts_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, client=None, embed=None):
    """(GatewayEngine, Watcher | None) for ``settings``; ``client`` as for serving.launch.build_server."""
    from expertmesh.base import resolve_base_dir
    from serving.launch import default_cache_dir, needs_registry

    if not settings.composition:
        raise ConfigError("composition is required: a registry composition name or a local composition directory")
    needs_registry(settings)
    local = Path(settings.composition).expanduser()
    base_dir = resolve_base_dir(settings.base)
    fingerprint = _base_fingerprint(base_dir)
    if local.is_dir():
        router, source, version = _local(local, experts_dir, client, embed)
        name = None
    else:
        if client is None:
            raise ConfigError(f"composition {settings.composition} is a registry name: a registry client is needed")
        router, source, version = _registry(settings.composition, Path(cache_dir) if cache_dir else
                                            default_cache_dir(), client, embed, fingerprint)
        name = settings.composition
    if fingerprint != router.spec.base_fingerprint:
        raise BaseMismatchError(f"composition {router.spec.ref} was built for base "
                                f"{router.spec.base_fingerprint[:12]}, not for {base_dir} ({fingerprint[:12]}); "
                                "pass the composition's base with --base")
    comp = GatewayComposition(router, _tokenizer(base_dir), name=name, version=version,
                              vocab_size=json.loads((base_dir / "config.json").read_text()).get("vocab_size"))
    pool = WorkerPool(opts.workers, max_adapters=opts.max_adapters, base_model=opts.worker_model,
                      timeout_s=opts.worker_timeout_s, connect_timeout_s=opts.connect_timeout_s,
                      api_key=opts.worker_api_key)
    engine = GatewayEngine(comp, pool, GatewayOptions(max_context=settings.max_context,
                                                      health_interval_s=opts.health_interval_s,
                                                      max_queue=settings.max_queue))
    watcher = None
    if source is not None:
        watcher = Watcher(source, engine, interval_s=settings.poll_interval_s, stale_after_s=settings.stale_after_s)
        watcher.poll_once()           # the withdrawn set is known (and unloaded) before the first request
    return engine, watcher


def _local(path: Path, experts_dir, client, embed):
    from expertmesh.compose.runtime import resolve_expert_dirs
    from expertmesh.compose.spec import read_composition

    experts = Path(experts_dir) if experts_dir else path.parent / "experts"
    if not experts.is_dir():
        raise ConfigError(f"no expert directory {experts}: pass --experts DIR (one subdirectory per member)")
    spec, tensors = read_composition(path)
    router = GatewayRouter(spec, tensors, resolve_expert_dirs(spec.member_names, experts), embed=embed)
    if client is None:
        log.warning("no registry: serving %s without live withdrawal", path)
        return router, None, str(spec.version) if spec.version else None
    from serving.registry_source import MemberSource

    return router, MemberSource(client, {m.name: m.version for m in spec.members}), \
        str(spec.version) if spec.version else None


def _registry(name: str, cache: Path, client, embed, fingerprint: str):
    from expertmesh.compose.spec import read_composition
    from serving.registry_source import CompositionSource, pull_composition

    comp_dir, dirs, info = pull_composition(client, name, None, cache, fingerprint)
    spec, tensors = read_composition(comp_dir)
    # members withdrawn before the start have no package: they stay members (so requests naming them get the
    # same answers as on the native backend) but are withdrawn from the first poll on
    dirs = {m: dirs.get(m, cache / "experts" / f"{m}@withdrawn") for m in spec.member_names}
    router = GatewayRouter(spec, tensors, dirs, embed=embed)
    return router, CompositionSource(client, name), str(info.version)


def _base_fingerprint(base_dir: Path) -> str:
    """The fingerprint recorded beside the base's weights (expertmesh.base), read without loading them."""
    from expertmesh.base import FINGERPRINT_FILE

    try:
        return json.loads((base_dir / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"base directory {base_dir} has no recorded fingerprint ({FINGERPRINT_FILE}); load it "
                          "once with the native backend to record it") from None


def _tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
