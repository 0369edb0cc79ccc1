"""Whether this machine runs bf16 autocast fast on the CPU: what ``precision="auto"`` resolves to.

bf16 pays only where the CPU has bf16 arithmetic (x86 AVX512-BF16 or AMX, Arm's BF16 extension). Elsewhere
torch emulates it: on an AVX2-only EPYC a 1024^2 bf16 matmul ran at 0.7 GFLOPS against 53-62 GFLOPS in fp32, so
"auto" meaning "bf16 whenever autocast works" made training ~80x slower there. The decision reads the CPU's
flags, not a timing, so it is the same on every run of one machine.

Its own module because training, the audit, the router task and the benchmarks all ask it, and none of them
should import another's module for it (train <-> audit made an import loop through it)."""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# /proc/cpuinfo flags (x86 "flags", Arm "Features") that mean native bf16 arithmetic
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def native_bf16(flags: set[str]) -> bool:
    return bool(flags & BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """True when the CPU has native bf16 arithmetic and a bf16 autocast matmul runs (some builds raise)."""
    if platform.system() != "Linux" or not native_bf16(cpu_flags()):
        return False
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (torch.ones(2, 2) @ torch.ones(2, 2)).sum().item()
        return True
    except RuntimeError:
        return False


def use_bf16(precision: str) -> bool:
    """Resolve a ``precision`` setting (auto | bf16 | fp32): bf16 when asked, or when "auto" and bf16 is native."""
    return precision == "bf16" or (precision == "auto" and bf16_supported())
