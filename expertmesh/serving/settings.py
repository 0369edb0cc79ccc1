"""ServeSettings: one typed object for the inference server, validated where each field is declared.

Environment (all optional; CLI flags override): EXPERTMESH_SERVE_<FIELD> in upper case, e.g.
EXPERTMESH_SERVE_MAX_BATCH=16, EXPERTMESH_SERVE_REGISTRY_URL=http://127.0.0.1:8700.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from expertmesh.errors import ConfigError
from expertmesh.validate import check_float, check_int

_ENV = "EXPERTMESH_SERVE_"


@dataclass
class ServeSettings:
    composition: str = ""                     # registry name, or a local composition directory
    registry_url: str | None = None           # None: serve the local directory, no live opt-out polling
    registry_token: str | None = None
    base: str | None = None                   # base model dir or "smollm2-135m-instruct" (default)
    dtype: str = "float32"
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None             # id in /v1/models (default: the composition's name)
    max_batch: int = 8                        # rows in one forward
    max_resident_experts: int = 64            # expert LoRA weights kept in memory (LRU beyond that)
    resident_budget_mb: float | None = None   # strict memory bound of the resident LoRA pool (None: count only)
    max_context: int = 2048                   # prompt + completion tokens per request
    max_tokens_limit: int = 1024              # largest max_tokens a request may ask for
    default_max_tokens: int = 128             # when a request gives none
    max_queue: int = 256                      # waiting requests beyond this get 503
    batch_wait_ms: float = 2.0                # an idle engine waits this long to gather a first batch
    poll_interval_s: float = 0.5              # registry revision poll; <= 1 s keeps withdrawal under 2 s
    stale_after_s: float = 10.0               # no successful poll for this long: serve the public base only
    request_timeout_s: float = 600.0
    max_body_bytes: int = 4 * 1024 * 1024     # request bodies above this get 413 before any parsing
    top_k: int | None = None                  # override the composition's top-k (benchmarks: 1 vs 2)
    threads: int | None = None                # torch threads of the engine (None: torch's default). On a
                                              # shared, oversubscribed CPU, 1 avoids OpenMP barrier stalls
    api_key: str | None = None                # set: every /v1/ call needs "Authorization: Bearer <key>" (the
                                              # openai client's api_key); probes and /metrics stay open

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
        check_int("port", self.port, lo=0, hi=65535)
        check_int("max_batch", self.max_batch, lo=1, hi=1024)
        check_int("max_resident_experts", self.max_resident_experts, lo=1)
        if self.resident_budget_mb is not None:
            check_float("resident_budget_mb", self.resident_budget_mb, lo=0.0, lo_open=True)
        check_int("max_context", self.max_context, lo=8)
        check_int("max_tokens_limit", self.max_tokens_limit, lo=1)
        check_int("default_max_tokens", self.default_max_tokens, lo=1, hi=self.max_tokens_limit)
        check_int("max_queue", self.max_queue, lo=1)
        check_float("batch_wait_ms", self.batch_wait_ms, lo=0.0, hi=1000.0)
        # The documented withdrawal bound (2 s) is one poll interval + a round trip + one step.
        check_float("poll_interval_s", self.poll_interval_s, lo=0.0, lo_open=True, hi=1.0)
        check_float("stale_after_s", self.stale_after_s, lo=0.0, lo_open=True)
        check_float("request_timeout_s", self.request_timeout_s, lo=0.0, lo_open=True)
        check_int("max_body_bytes", self.max_body_bytes, lo=1024)
        if self.top_k is not None:
            check_int("top_k", self.top_k, lo=1)
        if self.threads is not None:
            check_int("threads", self.threads, lo=1, hi=1024)
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8
                                         or any(c.isspace() for c in self.api_key)):
            raise ConfigError("api_key must be at least 8 characters without spaces")
        if self.registry_url is not None and not str(self.registry_url).startswith(("http://", "https://")):
            raise ConfigError(f"registry_url={self.registry_url!r} must start with http:// or https://")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "ServeSettings":
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_ENV + f.name.upper())
            if raw is None or raw == "":
                continue
            kw[f.name] = _parse(f, raw)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def with_(self, **changes: Any) -> "ServeSettings":
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["registry_token"] = "set" if self.registry_token else "unset"
        out["api_key"] = "set" if self.api_key else "unset"
        return out


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{_ENV}{f.name.upper()}={raw!r} must be a number") from None
    return raw
