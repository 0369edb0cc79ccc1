"""The expert manifest: everything that leaves the owner's machine, declared in one JSON file.

An expert package is a directory with exactly these files:

    adapter_config.json         PEFT LoraConfig (plain ``PeftModel.from_pretrained(base, dir)`` loads it)
    adapter_model.safetensors   PEFT LoRA weights
    signature.safetensors       router_rows [L, d] (trained), anchor_rows [L, d] (public row it trained
                                against), pilots [k, e] (RouterRetriever pilot embeddings, L2-normalised)
    manifest.json               this schema; ``files`` lists the sha256 of every other file
    README.md                   optional, human notes

No raw text and no pickle ever enters a package.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from expertmesh.errors import PackageError
from expertmesh.validate import check_float, check_int, check_known_fields, check_name, check_str_list

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
SIGNATURE_FILE = "signature.safetensors"
OPTIONAL_FILES = ("README.md",)
REQUIRED_FILES = (MANIFEST_FILE, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, SIGNATURE_FILE)
ALLOWED_FILES = REQUIRED_FILES + OPTIONAL_FILES


@dataclass
class LoraSpec:
    """The LoRA shape of one expert. Experts in one composition may differ here (HDEE-style)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        check_int("lora.r", self.r, lo=1, hi=1024)
        self.alpha = check_float("lora.alpha", self.alpha, lo=0.0, lo_open=True)
        self.dropout = check_float("lora.dropout", self.dropout, lo=0.0, hi=0.9)
        self.target_modules = check_str_list("lora.target_modules", self.target_modules, nonempty=True)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class SignatureSpec:
    num_layers: int
    hidden_size: int
    num_pilots: int
    embed_dim: int
    embedder: str

    def __post_init__(self) -> None:
        check_int("signature.num_layers", self.num_layers, lo=1)
        check_int("signature.hidden_size", self.hidden_size, lo=1)
        check_int("signature.num_pilots", self.num_pilots, lo=1)
        check_int("signature.embed_dim", self.embed_dim, lo=1)


@dataclass
class ExpertManifest:
    name: str
    owner: str
    base_fingerprint: str
    lora: LoraSpec
    signature: SignatureSpec
    version: int | None = None            # assigned by the registry on publish
    domain_tags: list[str] = field(default_factory=list)
    licence: str = "unspecified"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)   # resolved train config + summary
    metrics: dict[str, Any] = field(default_factory=dict)    # held-out loss of base vs expert
    files: dict[str, str] = field(default_factory=dict)      # file name -> sha256
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_name("owner", self.owner)
        if not isinstance(self.base_fingerprint, str) or len(self.base_fingerprint) < 16:
            raise PackageError(f"base_fingerprint={self.base_fingerprint!r} is not a fingerprint")
        if self.version is not None:
            check_int("version", self.version, lo=1)
        self.domain_tags = [check_name("domain_tags[]", t) for t in check_str_list("domain_tags", self.domain_tags)]
        if not isinstance(self.licence, str) or not self.licence or len(self.licence) > 128:
            raise PackageError(f"licence={self.licence!r} must be a short non-empty string (an SPDX id is best)")
        if self.format_version != FORMAT_VERSION:
            raise PackageError(f"format_version={self.format_version} is not supported (this expertmesh reads {FORMAT_VERSION})")
        for fname in self.files:
            if fname not in ALLOWED_FILES or fname == MANIFEST_FILE:
                raise PackageError(f"manifest lists file {fname!r}, which may not be in a package")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ExpertManifest":
        if not isinstance(data, dict):
            raise PackageError("manifest.json must hold a JSON object")
        check_known_fields(cls, data, what="manifest.json", error=PackageError)
        try:
            d = dict(data)
            d["lora"] = LoraSpec(**d["lora"])
            d["signature"] = SignatureSpec(**d["signature"])
            return cls(**d)
        except PackageError:
            raise
        except (KeyError, TypeError) as e:
            raise PackageError(f"manifest.json is missing or has malformed fields: {e}") from None
        except Exception as e:  # ConfigError from validators: same message, package context
            raise PackageError(f"manifest.json: {e}") from None
