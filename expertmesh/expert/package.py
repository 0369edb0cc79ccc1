"""Read, verify and write expert packages (format in ``manifest.py``).

``verify_package`` is what the registry runs on upload and what every loader runs before touching weights:
only the allowed files, every checksum as declared, safetensors headers that parse, tensor shapes that match
the manifest. It never unpickles anything, and it needs only json and the safetensors header format: torch is
imported by the functions that load or save tensors, so the registry verifies packages without torch installed.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertmesh import strictjson
from expertmesh.errors import BaseMismatchError, PackageError
from expertmesh.expert.manifest import (
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ALLOWED_FILES, MANIFEST_FILE, MAX_MANIFEST_BYTES, REQUIRED_FILES,
    SIGNATURE_FILE, ExpertManifest,
)
from expertmesh.fileio import read_package_json, sha256_file, write_json_atomic

if TYPE_CHECKING:
    import torch

MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024  # bytes; a larger header is a malformed or hostile file
MAX_ADAPTER_CONFIG_BYTES = 256 * 1024      # a PEFT adapter_config.json is ~1 KB


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse the JSON header of a safetensors file without loading tensors (cheap and safe)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise PackageError(f"{path.name} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > MAX_SAFETENSORS_HEADER:
                raise PackageError(f"{path.name} is not a safetensors file (header size {n})")
            raw_header = f.read(n)
    except OSError as e:
        raise PackageError(f"{path.name} cannot be read: {e}") from None
    header = strictjson.loads(raw_header, what=f"{path.name} header", error=PackageError)
    if not isinstance(header, dict):
        raise PackageError(f"{path.name} is not a safetensors file")
    header.pop("__metadata__", None)
    bad = [k for k, v in header.items() if not isinstance(v, dict)]
    if bad:
        raise PackageError(f"{path.name} is not a safetensors file (entry {bad[0][:64]!r} is not an object)")
    return header


def read_manifest(package_dir: str | Path) -> ExpertManifest:
    data = read_package_json(Path(package_dir) / MANIFEST_FILE,
                             f"{package_dir} is not an expert package: {MANIFEST_FILE} is missing",
                             max_bytes=MAX_MANIFEST_BYTES)
    return ExpertManifest.from_dict(data)


def verify_package(package_dir: str | Path, *, expected_fingerprint: str | None = None,
                   weights: bool = True) -> ExpertManifest:
    """Check a package completely; return its manifest or raise PackageError/BaseMismatchError.

    ``weights=False`` skips hashing the LoRA weights file (its header is still parsed): what a composition's
    build or load does, since it reads only the signature; ``verify_weights`` checks the weights later, when
    they are first loaded."""
    root = Path(package_dir)
    if not root.is_dir():
        raise PackageError(f"expert package {root} does not exist or is not a directory")
    present = {p.name for p in root.iterdir()}
    extra = sorted(present - set(ALLOWED_FILES))
    if extra:
        raise PackageError(f"expert package holds files that are not allowed: {extra} (allowed: {list(ALLOWED_FILES)})")
    missing = [f for f in REQUIRED_FILES if f not in present]
    if missing:
        raise PackageError(f"expert package is missing {missing}")
    for name in present:
        if not (root / name).is_file() or (root / name).is_symlink():
            raise PackageError(f"{name} in an expert package must be a regular file")
    manifest = read_manifest(root)
    for name in present - {MANIFEST_FILE}:
        declared = manifest.files.get(name)
        if declared is None:
            raise PackageError(f"{name} is not listed in manifest.files")
        if name == ADAPTER_WEIGHTS_FILE and not weights:
            continue
        if sha256_file(root / name) != declared:
            raise PackageError(f"{name} does not match its sha256 in the manifest (tampered or corrupted)")
    if expected_fingerprint is not None and manifest.base_fingerprint != expected_fingerprint:
        raise BaseMismatchError(
            f"expert {manifest.ref} was trained on base {manifest.base_fingerprint[:12]}, "
            f"not on the base in use ({expected_fingerprint[:12]})"
        )
    _check_adapter_config(root / ADAPTER_CONFIG_FILE, manifest)
    _check_signature(root / SIGNATURE_FILE, manifest)
    read_safetensors_header(root / ADAPTER_WEIGHTS_FILE)
    return manifest


def verify_weights(package_dir: str | Path, manifest: ExpertManifest) -> None:
    """The LoRA weights file is there and matches its sha256 in the (already verified) manifest."""
    path = Path(package_dir) / ADAPTER_WEIGHTS_FILE
    if not path.is_file():
        raise PackageError(f"expert {manifest.ref}: {path} is missing (the package changed after it was loaded)")
    if sha256_file(path) != manifest.files.get(ADAPTER_WEIGHTS_FILE):
        raise PackageError(f"expert {manifest.ref}: {ADAPTER_WEIGHTS_FILE} does not match its sha256 in the "
                           "manifest (tampered or corrupted)")


def _check_adapter_config(path: Path, manifest: ExpertManifest) -> None:
    if path.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise PackageError(f"{ADAPTER_CONFIG_FILE} is larger than {MAX_ADAPTER_CONFIG_BYTES} bytes")
    cfg = strictjson.loads(path.read_bytes(), what=ADAPTER_CONFIG_FILE, error=PackageError)
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise PackageError(f"{ADAPTER_CONFIG_FILE} is not a PEFT LoRA config")
    if cfg.get("r") != manifest.lora.r:
        raise PackageError(f"{ADAPTER_CONFIG_FILE} rank {cfg.get('r')} disagrees with manifest rank {manifest.lora.r}")


SIGNATURE_KEYS = ("router_rows", "anchor_rows", "pilots")


def _check_signature(path: Path, manifest: ExpertManifest) -> None:
    header = read_safetensors_header(path)
    s = manifest.signature
    want = {
        "router_rows": [s.num_layers, s.hidden_size],
        "anchor_rows": [s.num_layers, s.hidden_size],
        "pilots": [s.num_pilots, s.embed_dim],
    }
    for key, shape in want.items():
        got = header.get(key, {}).get("shape")
        if got != shape:
            raise PackageError(f"{SIGNATURE_FILE}: {key} has shape {got}, manifest says {shape}")


def load_signature(package_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(package_dir) / SIGNATURE_FILE))
    return {k: tensors[k].float() for k in SIGNATURE_KEYS}


def save_signature(out_dir: Path, router_rows: torch.Tensor, anchor_rows: torch.Tensor, pilots: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file(
        {"router_rows": router_rows.detach().float().contiguous().cpu(),
         "anchor_rows": anchor_rows.detach().float().contiguous().cpu(),
         "pilots": pilots.detach().float().contiguous().cpu()},
        str(out_dir / SIGNATURE_FILE),
    )


def finalize_manifest(out_dir: Path, manifest: ExpertManifest) -> ExpertManifest:
    """Record the sha256 of every file in ``out_dir`` and write manifest.json last."""
    manifest.files = {p.name: sha256_file(p) for p in sorted(out_dir.iterdir()) if p.name != MANIFEST_FILE}
    write_json_atomic(out_dir / MANIFEST_FILE, manifest.to_dict())
    return manifest
