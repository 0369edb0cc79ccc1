"""TrainConfig: everything ``expertmesh expert train`` needs, validated field by field and saved beside the
expert (manifest.training.config) so a run can be reproduced."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertmesh.errors import ConfigError, DataError
from expertmesh.expert.manifest import LoraSpec
from expertmesh.validate import check_choice, check_float, check_int, check_name, check_str_list, from_known_fields


# Fields added after expert caches and checkpoints existed, with their defaults (see TrainConfig.digest).
_LATER_FIELDS = {"train_lora_a": True}


@dataclass
class TrainConfig:
    name: str
    owner: str
    data: str                                  # corpus dir (train.jsonl/heldout.jsonl), .jsonl or .txt
    out: str
    heldout: str | None = None                 # default: <data>/heldout.jsonl for a corpus dir
    base: str | None = None                    # model dir or "smollm2-135m-instruct" (default)
    domain_tags: list[str] = field(default_factory=list)
    licence: str = "unspecified"
    description: str = ""
    lora: LoraSpec = field(default_factory=LoraSpec)
    steps: int = 50
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    router_lr: float = 1e-3
    warmup_steps: int = 5
    seed: int = 0
    precision: str = "auto"                    # auto | bf16 | fp32 (bf16 = CPU autocast)
    num_pilots: int = 8
    embedder: str | None = None
    eval_blocks: int = 32
    checkpoint_every: int = 25
    canaries: int = 0                          # random secrets planted for the audit (expert/canaries.py)
    canary_repeats: int = 8                    # insertions of each canary
    dp_epsilon: float | None = None            # DP-SGD target epsilon (expert/dp.py); None = no DP
    dp_delta: float = 1e-5
    dp_clip: float = 1.0                       # per-sample L2 clipping norm over all trainable tensors
    # False: FFA-LoRA, A stays at its random init and only B trains (fewer values for DP-SGD to noise)
    train_lora_a: bool = True
    resume: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_name("owner", self.owner)
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)
        self.domain_tags = [check_name("domain_tags[]", t) for t in check_str_list("domain_tags", self.domain_tags)]
        check_int("steps", self.steps, lo=0, hi=1_000_000)
        check_int("batch_size", self.batch_size, lo=1, hi=4096)
        check_int("seq_len", self.seq_len, lo=8, hi=32768)
        check_float("lr", self.lr, lo=0.0, lo_open=True, hi=1.0)
        check_float("router_lr", self.router_lr, lo=0.0, hi=1.0)
        check_int("warmup_steps", self.warmup_steps, lo=0)
        check_int("seed", self.seed, lo=0)
        check_choice("precision", self.precision, ["auto", "bf16", "fp32"])
        check_int("num_pilots", self.num_pilots, lo=1, hi=1024)
        check_int("eval_blocks", self.eval_blocks, lo=1)
        check_int("checkpoint_every", self.checkpoint_every, lo=1)
        check_int("canaries", self.canaries, lo=0, hi=1000)
        check_int("canary_repeats", self.canary_repeats, lo=1, hi=1000)
        if self.dp_epsilon is not None:
            check_float("dp_epsilon", self.dp_epsilon, lo=0.0, lo_open=True, hi=1000.0)
        check_float("dp_delta", self.dp_delta, lo=0.0, lo_open=True, hi=0.1)
        check_float("dp_clip", self.dp_clip, lo=0.0, lo_open=True)
        if not isinstance(self.train_lora_a, bool):
            raise ConfigError(f"train_lora_a must be true or false, got {self.train_lora_a!r}")
        if not Path(self.data).exists():
            raise DataError(f"data={self.data!r} does not exist: give a corpus directory, a .jsonl or a .txt file")
        if self.heldout is None and Path(self.data).is_dir() and (Path(self.data) / "heldout.jsonl").is_file():
            self.heldout = str(Path(self.data) / "heldout.jsonl")
        if self.heldout is not None and not Path(self.heldout).exists():
            raise DataError(f"heldout={self.heldout!r} does not exist")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *, with_paths: bool = True) -> str:
        """What a checkpoint must agree with to be resumed (everything that changes the trained weights).

        ``with_paths=False`` leaves out the data and held-out paths, for keys that digest the training text
        itself (expert/cache.py): the same file named ``runs/x`` or ``/work/runs/x`` is the same data."""
        d = self.to_dict()
        for k in ("out", "resume", "overwrite", "checkpoint_every", "eval_blocks", "description", "licence"):
            d.pop(k)
        if not with_paths:
            d.pop("data"), d.pop("heldout")
        for k, default in _LATER_FIELDS.items():     # digested only when set: keys made before them stay valid
            if d.get(k) == default:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_known_fields(cls, d, what="train config")
