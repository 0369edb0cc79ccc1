"""Typed configs for coordinator training; each field is validated where it is declared.

Budget arithmetic for the defaults (SmolLM2-135M, 2 CPU cores, ~250 tokens/s forward+backward):
one client round = 8 steps x 4 blocks x 128 tokens = 4,096 tokens, ~16 s; 3 clients x 3 rounds = 36,864 tokens.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from expertmesh.errors import ConfigError
from expertmesh.validate import check_choice, check_float, check_int, from_known_fields


@dataclass
class TuneConfig:
    """Local router tuning on one owner's blocks (also used for central tuning on pooled blocks)."""

    steps: int = 8                 # optimiser steps per round per client
    batch_size: int = 4            # blocks per step
    seq_len: int = 128             # tokens per block
    lr: float = 1e-2               # Adam; steps are ~lr per coordinate whatever the row scale (see task.py)
    train_bias: bool = True        # also tune a per-entry logit bias [N+1]
    seed: int = 0
    precision: str = "auto"        # auto | bf16 | fp32 (bf16 = CPU autocast)
    eval_blocks: int = 16          # held-out blocks per owner for evaluation

    def __post_init__(self) -> None:
        check_int("steps", self.steps, lo=0, hi=100_000)
        check_int("batch_size", self.batch_size, lo=1, hi=4096)
        check_int("seq_len", self.seq_len, lo=8, hi=32768)
        check_float("lr", self.lr, lo=0.0, lo_open=True, hi=10.0)
        if not isinstance(self.train_bias, bool):
            raise ConfigError(f"train_bias={self.train_bias!r} must be true or false")
        check_int("seed", self.seed, lo=0)
        check_choice("precision", self.precision, ["auto", "bf16", "fp32"])
        check_int("eval_blocks", self.eval_blocks, lo=1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TuneConfig":
        return from_known_fields(cls, d)


@dataclass
class DPConfig:
    """Differential privacy on router updates, applied on the client with Flower's mods.

    mode "central": the client clips its update to ``clipping_norm`` (``fixedclipping_mod``) and the server adds
    Gaussian noise of std ``noise_multiplier * clipping_norm / clients`` to the average
    (``DifferentialPrivacyClientSideFixedClipping``). mode "local": each client clips and adds its own noise
    (``LocalDpMod``, std = clipping_norm * sqrt(2 ln(1.25/delta)) / epsilon), so the server never sees an
    un-noised update.
    """

    mode: str = "none"             # none | central | local
    clipping_norm: float = 1.0     # L2 norm of (new - old) router arrays
    noise_multiplier: float = 0.5  # central mode
    epsilon: float = 10.0          # local mode, per round
    delta: float = 1e-5            # local mode

    def __post_init__(self) -> None:
        check_choice("dp.mode", self.mode, ["none", "central", "local"])
        check_float("dp.clipping_norm", self.clipping_norm, lo=0.0, lo_open=True)
        check_float("dp.noise_multiplier", self.noise_multiplier, lo=0.0)
        check_float("dp.epsilon", self.epsilon, lo=0.0, lo_open=True)
        check_float("dp.delta", self.delta, lo=0.0, lo_open=True, hi=1.0)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DPConfig":
        return from_known_fields(cls, d)


@dataclass
class FederationConfig:
    """How the server runs rounds: sampling, fault tolerance, privacy."""

    rounds: int = 3
    fraction: float = 1.0          # fraction of connected owners sampled per round
    min_clients: int = 2           # a round aggregates if at least this many owners answered
    min_available: int = 2         # wait until this many owners are connected before round 1
    round_timeout: float = 900.0   # seconds to wait for replies; late or silent owners are left out
    # Server step on the mean update (FedAvgM's server learning rate, no momentum): 1 = plain FedAvg. Owners who
    # each hold one domain pull the rows in different directions, and the mean of N such updates moves the model
    # about 1/N as far as the same N*L steps run one after another; server_lr = N restores that distance.
    server_lr: float = 1.0
    dp: DPConfig = dataclasses.field(default_factory=DPConfig)

    def __post_init__(self) -> None:
        if isinstance(self.dp, dict):
            self.dp = DPConfig.from_dict(self.dp)
        check_int("rounds", self.rounds, lo=1, hi=10_000)
        check_float("fraction", self.fraction, lo=0.0, lo_open=True, hi=1.0)
        check_int("min_clients", self.min_clients, lo=1)
        check_int("min_available", self.min_available, lo=1)
        check_float("round_timeout", self.round_timeout, lo=0.0, lo_open=True)
        check_float("server_lr", self.server_lr, lo=0.0, lo_open=True, hi=1000.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "FederationConfig":
        return from_known_fields(cls, d)
