"""LoRA weights in PEFT's on-disk format, read and written without PEFT's model classes.

PEFT stores ``base_model.model.<module path>.lora_A.weight`` [r, in] and ``...lora_B.weight`` [out, r]
and applies ``delta(x) = B A x * lora_alpha / r``. Writing exactly that layout is what lets plain
``PeftModel.from_pretrained(base, package_dir)`` load an expertmesh expert.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from expertmesh.errors import PackageError
from expertmesh.expert.manifest import ADAPTER_WEIGHTS_FILE, ExpertManifest, LoraSpec
from expertmesh.expert.package import load_signature, verify_package, verify_weights

_PREFIX = "base_model.model."


@dataclass
class ExpertWeights:
    """One expert in memory: its LoRA factors per module path and its router signature."""

    name: str
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]   # module path -> (A [r, in], B [out, r])
    scaling: float
    router_rows: torch.Tensor                            # [L, d]
    anchor_rows: torch.Tensor                            # [L, d]
    pilots: torch.Tensor                                 # [k, e], L2-normalised
    manifest: ExpertManifest | None = None
    package_dir: Path | None = None                      # where ``load_lora`` reads the factors of a lazy expert

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _ in self.lora.values())

    @property
    def tags(self) -> list[str]:
        return list(self.manifest.domain_tags) if self.manifest else []


def save_peft_adapter(out_dir: Path, lora: dict[str, tuple[torch.Tensor, torch.Tensor]], spec: LoraSpec,
                      base_name: str) -> None:
    from peft import LoraConfig

    tensors = {}
    for path, (a, b) in lora.items():
        tensors[f"{_PREFIX}{path}.lora_A.weight"] = a.detach().float().contiguous().cpu()
        tensors[f"{_PREFIX}{path}.lora_B.weight"] = b.detach().float().contiguous().cpu()
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS_FILE))
    LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
               bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_name).save_pretrained(str(out_dir))


def read_peft_adapter(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    tensors = load_file(str(path))
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(_PREFIX):-len(".lora_A.weight")] if key.startswith(_PREFIX) else key[:-len(".lora_A.weight")]
        b = tensors.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None or b.shape[1] != a.shape[0]:
            raise PackageError(f"{path.name}: {module} has lora_A without a matching lora_B")
        out[module] = (a.float(), b.float())
    if not out:
        raise PackageError(f"{path.name} holds no LoRA weights")
    return out


def load_expert(package_dir: str | Path, *, expected_fingerprint: str | None = None,
                name: str | None = None, weights: bool = True) -> ExpertWeights:
    """Verify a package (checksums, format, base) and load it into memory.

    ``weights=False`` reads only the manifest and the signature (router rows, pilots): ``lora`` stays empty
    until ``load_lora`` (the weights file's checksum is checked then)."""
    package_dir = Path(package_dir)
    manifest = verify_package(package_dir, expected_fingerprint=expected_fingerprint, weights=weights)
    sig = load_signature(package_dir)
    return ExpertWeights(
        name=name or manifest.name, lora=read_peft_adapter(package_dir / ADAPTER_WEIGHTS_FILE) if weights else {},
        scaling=manifest.lora.scaling, router_rows=sig["router_rows"], anchor_rows=sig["anchor_rows"],
        pilots=sig["pilots"], manifest=manifest, package_dir=package_dir,
    )


def load_lora(expert: ExpertWeights) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The LoRA factors of an expert loaded with ``weights=False``: checksum checked, then read (PackageError
    naming the expert if the package is missing or corrupt now)."""
    if expert.package_dir is None or expert.manifest is None:
        raise PackageError(f"expert {expert.name} has no package to load its weights from")
    if not expert.package_dir.is_dir():
        raise PackageError(f"expert {expert.name}: package {expert.package_dir} is missing")
    verify_weights(expert.package_dir, expert.manifest)
    return read_peft_adapter(expert.package_dir / ADAPTER_WEIGHTS_FILE)

