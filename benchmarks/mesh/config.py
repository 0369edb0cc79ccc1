"""Bench presets: tiny (tests, seconds), quick (README, < 15 min on 2 cores), full (documented, ~2-3 h)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from expertmesh.errors import ConfigError

ALL_DOMAINS = ["law", "medicine", "code", "literature", "computing", "systems"]


@dataclass
class BenchConfig:
    mode: str = "quick"                       # tiny | quick | full
    out: str = "runs/bench"
    domains: list[str] = field(default_factory=lambda: list(ALL_DOMAINS))
    expert_domains: int = 4                   # the first k available domains get an expert; the rest are uncovered
    max_docs: int | None = 60                 # corpus size per domain
    steps: int = 20                           # equal budget per expert: steps x batch_size x seq_len tokens
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 2e-3
    rank: int = 8
    eval_blocks: int = 8                      # held-out blocks per domain
    central_steps: int | None = None          # pooled LoRA budget (default: steps x number of experts)
    gen_tokens: int = 16
    scaling_sizes: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    base: str | None = None                   # None: the default base (tiny mode builds its own)
    reuse: bool = False
    seed: int = 0
    threads: int | None = None                # torch threads; None: 1 on a loaded shared machine, else all cores

    def __post_init__(self) -> None:
        if self.mode not in ("tiny", "quick", "full"):
            raise ConfigError(f"mode={self.mode!r}: choose tiny, quick or full")
        if self.expert_domains < 1:
            raise ConfigError("expert_domains must be >= 1")
        if not self.domains:
            raise ConfigError("give at least one domain")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def preset(mode: str, **overrides) -> BenchConfig:
    base = {
        "tiny": dict(domains=["medicine", "law", "code", "poetry"], expert_domains=3, max_docs=None, steps=4,
                     batch_size=2, seq_len=32, lr=5e-3, rank=4, eval_blocks=2, gen_tokens=4,
                     scaling_sizes=[1, 10, 100]),
        "quick": dict(expert_domains=3, max_docs=60, steps=20, batch_size=4, seq_len=128, eval_blocks=8,
                      gen_tokens=16),
        "full": dict(expert_domains=5, max_docs=400, steps=60, batch_size=8, seq_len=256, lr=1e-3, rank=16,
                     eval_blocks=32, gen_tokens=32, scaling_sizes=[1, 10, 100, 300, 1000]),
    }
    if mode not in base:
        raise ConfigError(f"unknown bench mode {mode!r}")
    kw = {**base[mode], **{k: v for k, v in overrides.items() if v is not None}}
    return BenchConfig(mode=mode, **kw)


# Expected wall time on the 2-core reference machine (documented in BENCHMARKS.md).
EXPECTED_TIME = {
    "tiny": "~20 s",
    "quick": "measured 10.9 min cold (corpora, 3 experts, pooled LoRA, 14 methods; before fedavg-lora and the "
             "24-step MoT, which add ~2 min) on the idle 2-core machine, 17.4 min when it was shared with 5 other "
             "jobs (load ~6.5); --reuse skips corpora and expert training: 4.9 min with all 15 methods",
    "full": "not run in this session; estimated ~2.5 h on an idle 2-core machine from the measured throughputs "
            "(5 experts x 123k tokens + pooled LoRA 614k tokens at ~290 tok/s ~ 70 min; 32 x 256-token blocks x "
            "6 domains x ~17 forward passes at ~475 tok/s ~ 30 min; federated router 5 rounds x 5 owners x 8 steps "
            "~ 25 min; MoT 40 steps ~ 12 min), several times that on a shared, loaded machine",
}
