"""Whether this machine runs bf16 autocast on the CPU: what ``precision="auto"`` resolves to.

Its own module because training, the audit, the router task and the benchmarks all ask it, and none of them
should import another's module for it (train <-> audit made an import loop through it)."""
from __future__ import annotations

import torch


def bf16_supported() -> bool:
    """True when a bf16 autocast matmul runs on the CPU (some builds and CPUs raise instead)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (torch.ones(2, 2) @ torch.ones(2, 2)).sum().item()
        return True
    except RuntimeError:
        return False
