"""The composition package: a named, versioned set of expert versions plus router artifacts and policy.

A composition package is a directory with exactly these files:

    composition.json     ``CompositionSpec`` below; ``files`` lists the sha256 of every other file
    router.safetensors   expert_rows [L, N, d]   router row of member j per decoder layer (gate entry j + 1)
                         anchor_rows [L, d]      the public entry (gate entry 0)
                         bias [N + 1]            optional per-entry gate bias (entry 0 = public)
                         pilots [P, e]           optional RouterRetriever pilots of all members, L2-normalised
                         pilot_owner [P]         int64 member index of each pilot
                         <router_type>.*         optional tensors only that router type reads (e.g. ``mot.*``)
    README.md            optional, human notes

Members are referenced, not embedded: each ``MemberRef`` carries the expert's name, version and ``digest``
(sha256 of its canonical manifest without ``version``, the same identity the registry computes), so a runtime
loading the composition can check it was given exactly the expert versions the router was built for.
No pickle ever enters a composition.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertmesh.errors import ConfigError, PackageError
from expertmesh.validate import check_choice, check_float, check_int, check_known_fields, check_name, check_str_list

FORMAT_VERSION = 1
COMPOSITION_FILE = "composition.json"
ROUTER_FILE = "router.safetensors"
OPTIONAL_FILES = ("README.md",)
ALLOWED_FILES = (COMPOSITION_FILE, ROUTER_FILE) + OPTIONAL_FILES
SELECTIONS = ("token", "sequence", "both")
PILOT_SCORES = ("mean", "top3", "max")        # retriever scoring rules (compose/selector.py)
CORE_TENSORS = ("expert_rows", "anchor_rows", "bias", "pilots", "pilot_owner")


def expert_digest(manifest: Any) -> str:
    """sha256 of the canonical manifest without ``version`` (the registry's expert identity).

    ``manifest`` is an ExpertManifest or its dict. The manifest lists every other file's sha256, so this digest
    pins the weights and the signature too.
    """
    doc = manifest.to_dict() if hasattr(manifest, "to_dict") else dict(manifest)
    doc = {k: v for k, v in doc.items() if k != "version"}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()


@dataclass
class MemberRef:
    """One member expert version of a composition (what it was built from; weights live in the expert)."""

    name: str
    version: int | None = None
    digest: str = ""
    owner: str = "unknown"
    domain_tags: list[str] = field(default_factory=list)
    licence: str = "unspecified"

    def __post_init__(self) -> None:
        check_name("members[].name", self.name)
        if self.version is not None:
            check_int(f"members[{self.name}].version", self.version, lo=1)
        if not isinstance(self.digest, str) or (self.digest and len(self.digest) != 64):
            raise ConfigError(f"members[{self.name}].digest={self.digest!r} must be a sha256 hex digest or empty")
        check_name(f"members[{self.name}].owner", self.owner)
        self.domain_tags = [check_name(f"members[{self.name}].domain_tags[]", t)
                            for t in check_str_list(f"members[{self.name}].domain_tags", self.domain_tags)]
        if not isinstance(self.licence, str) or not self.licence or len(self.licence) > 128:
            raise ConfigError(f"members[{self.name}].licence={self.licence!r} must be a short non-empty string")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @classmethod
    def from_manifest(cls, manifest, *, name: str | None = None) -> "MemberRef":
        return cls(name=name or manifest.name, version=manifest.version, digest=expert_digest(manifest),
                   owner=manifest.owner, domain_tags=list(manifest.domain_tags), licence=manifest.licence)


@dataclass
class CompositionSpec:
    """What a composition is: members, router type and routing policy. Saved as composition.json.

    selection: "token"    token-level gate over every allowed member (FlexOlmo);
               "sequence" retriever only: fixed weights softmax(score / temperature) over the top-m members;
               "both"     retriever picks the top-m candidates, then the token-level gate runs among them.
    top_m: retriever candidate count (None = all members); only used when selection is not "token".
    Cosine scores differ by ~0.05-0.3 between domains, hence score_temperature ~0.05 for "sequence" weights.
    pilot_score: retriever only: a member's score is the mean ("mean"), the mean of the best 3 ("top3") or the
    best ("max") of its pilots' cosine similarities to the prompt (compose/selector.py).
    min_score: retriever only: members scoring below it are never candidates, so a request no member's pilots
    resemble (an uncovered domain) is answered by the public base instead of the nearest-but-wrong expert.
    """

    name: str
    base_fingerprint: str
    router_type: str
    members: list[MemberRef]
    version: int | None = None
    top_k: int = 2
    top_m: int | None = None
    temperature: float = 1.0
    selection: str = "token"
    score_temperature: float = 0.05      # sequence selection: softmax(cosine score / this) over the top-m
    min_score: float | None = None       # retriever: a member needs at least this cosine score to be a candidate
    pilot_score: str = "mean"            # retriever: how a member's pilot similarities make its score (selector.py)
    embedder: str | None = None          # embedder of the pilots (None = the default embedder)
    description: str = ""
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        from expertmesh.compose.routers import known_router_types

        check_name("name", self.name)
        if not isinstance(self.base_fingerprint, str) or len(self.base_fingerprint) < 16:
            raise ConfigError(f"base_fingerprint={self.base_fingerprint!r} is not a base fingerprint")
        if self.router_type not in known_router_types():
            raise ConfigError(f"router_type={self.router_type!r} is not a registered router type; "
                              f"choose from {known_router_types()}")
        self.members = [m if isinstance(m, MemberRef) else MemberRef(**m) for m in self.members]
        if not self.members:
            raise ConfigError("members must list at least one expert")
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"members lists {dup} more than once; one version per expert per composition")
        if self.version is not None:
            check_int("version", self.version, lo=1)
        check_int("top_k", self.top_k, lo=1, hi=1024)
        if self.top_m is not None:
            check_int("top_m", self.top_m, lo=1, hi=100_000)
        self.temperature = check_float("temperature", self.temperature, lo=0.0, lo_open=True)
        check_choice("selection", self.selection, SELECTIONS)
        self.score_temperature = check_float("score_temperature", self.score_temperature, lo=0.0, lo_open=True)
        if self.min_score is not None:
            self.min_score = check_float("min_score", self.min_score, lo=-1.0, hi=1.0)
        check_choice("pilot_score", self.pilot_score, PILOT_SCORES)
        if not isinstance(self.provenance, dict):
            raise ConfigError("provenance must be a JSON object")
        if self.format_version != FORMAT_VERSION:
            raise PackageError(f"format_version={self.format_version} is not supported (this expertmesh reads "
                               f"{FORMAT_VERSION})")
        for fname in self.files:
            if fname not in ALLOWED_FILES or fname == COMPOSITION_FILE:
                raise PackageError(f"composition lists file {fname!r}, which may not be in a composition")

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "CompositionSpec":
        if not isinstance(data, dict):
            raise PackageError(f"{COMPOSITION_FILE} must hold a JSON object")
        check_known_fields(cls, data, what=COMPOSITION_FILE, error=PackageError)
        try:
            return cls(**data)
        except PackageError:
            raise
        except (KeyError, TypeError) as e:
            raise PackageError(f"{COMPOSITION_FILE} is missing or has malformed fields: {e}") from None
        except ConfigError as e:
            raise PackageError(f"{COMPOSITION_FILE}: {e.message}") from None


def check_tensors(spec: CompositionSpec, tensors: dict[str, Any], *, where: str = ROUTER_FILE) -> None:
    """Shapes and dtypes of the router tensors against the spec (works on tensors or on header shapes)."""

    def shape(key):
        t = tensors[key]
        return list(t["shape"]) if isinstance(t, dict) else list(t.shape)

    n = len(spec.members)
    for key in ("expert_rows", "anchor_rows"):
        if key not in tensors:
            raise PackageError(f"{where} is missing {key!r}")
    er, ar = shape("expert_rows"), shape("anchor_rows")
    if len(er) != 3 or er[1] != n:
        raise PackageError(f"{where}: expert_rows has shape {er}, expected [L, {n}, d] for {n} members")
    if ar != [er[0], er[2]]:
        raise PackageError(f"{where}: anchor_rows has shape {ar}, expected {[er[0], er[2]]}")
    if "bias" in tensors and shape("bias") != [n + 1]:
        raise PackageError(f"{where}: bias has shape {shape('bias')}, expected [{n + 1}] (public + members)")
    if ("pilots" in tensors) != ("pilot_owner" in tensors):
        raise PackageError(f"{where}: pilots and pilot_owner come together")
    if "pilots" in tensors:
        p = shape("pilots")
        if len(p) != 2 or shape("pilot_owner") != [p[0]]:
            raise PackageError(f"{where}: pilots {p} / pilot_owner {shape('pilot_owner')} do not agree")
        po = tensors["pilot_owner"]
        if not isinstance(po, dict):
            if str(po.dtype) != "torch.int64":
                raise PackageError(f"{where}: pilot_owner must be int64, got {po.dtype}")
            if po.numel() and (int(po.min()) < 0 or int(po.max()) >= n):
                raise PackageError(f"{where}: pilot_owner holds member indices outside 0..{n - 1}")
    prefix = f"{spec.router_type}."
    for key in tensors:
        if key not in CORE_TENSORS and not key.startswith(prefix):
            raise PackageError(f"{where}: tensor {key!r} is neither a core tensor {list(CORE_TENSORS)} nor "
                               f"prefixed {prefix!r}")


def write_composition(out_dir: str | Path, spec: CompositionSpec, tensors: dict[str, Any], *,
                      readme: str | None = None, overwrite: bool = False) -> CompositionSpec:
    """Write the package atomically (complete or absent); returns the spec with ``files`` filled in."""
    import torch
    from safetensors.torch import save_file

    from expertmesh.fileio import atomic_directory, sha256_file, write_json_atomic

    tensors = {k: (v.detach().contiguous().cpu() if v.dtype == torch.int64 else v.detach().float().contiguous().cpu())
               for k, v in tensors.items()}
    check_tensors(spec, tensors)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / ROUTER_FILE), metadata={"format": "expertmesh-composition"})
        if readme:
            (tmp / "README.md").write_text(readme, encoding="utf-8")
        spec.files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != COMPOSITION_FILE}
        write_json_atomic(tmp / COMPOSITION_FILE, spec.to_dict())
    return spec


def read_spec(comp_dir: str | Path) -> CompositionSpec:
    from expertmesh.fileio import read_package_json

    from expertmesh.expert.manifest import MAX_MANIFEST_BYTES

    data = read_package_json(Path(comp_dir) / COMPOSITION_FILE,
                             f"{comp_dir} is not a composition: {COMPOSITION_FILE} is missing",
                             max_bytes=MAX_MANIFEST_BYTES)   # the registry's cap on composition documents too
    return CompositionSpec.from_dict(data)


def store_evaluation(comp_dir: str | Path, results: list[dict[str, Any]]) -> CompositionSpec:
    """Keep held-out evaluation results (the ``compose eval --json`` form, one per corpus) in the composition's
    provenance as ``evaluation``: the registry's composition page draws its routing heat map from them. Only
    composition.json is rewritten (atomically); the digests it lists never cover itself, so the composition still
    verifies, and publishing it carries the evaluation along."""
    from expertmesh.fileio import write_json_atomic

    spec = verify_composition(comp_dir)
    kept = ("data", "blocks", "seq_len", "base_loss", "composition_loss", "gate_mass")
    spec.provenance = {**spec.provenance, "evaluation": [{k: r[k] for k in kept if k in r} for r in results]}
    write_json_atomic(Path(comp_dir) / COMPOSITION_FILE, spec.to_dict())
    return spec


def verify_composition(comp_dir: str | Path) -> CompositionSpec:
    """Allowed files only, checksums as declared, router tensor shapes as the spec says; never loads weights."""
    from expertmesh.expert.package import read_safetensors_header
    from expertmesh.fileio import sha256_file

    root = Path(comp_dir)
    if not root.is_dir():
        raise PackageError(f"composition {root} does not exist or is not a directory")
    present = {p.name for p in root.iterdir()}
    extra = sorted(present - set(ALLOWED_FILES))
    if extra:
        raise PackageError(f"composition holds files that are not allowed: {extra} (allowed: {list(ALLOWED_FILES)})")
    for need in (COMPOSITION_FILE, ROUTER_FILE):
        if need not in present:
            raise PackageError(f"composition {root} is missing {need}")
    spec = read_spec(root)
    for name in present - {COMPOSITION_FILE}:
        if (root / name).is_symlink() or not (root / name).is_file():
            raise PackageError(f"{name} in a composition must be a regular file")
        declared = spec.files.get(name)
        if declared is None:
            raise PackageError(f"{name} is not listed in {COMPOSITION_FILE} files")
        if sha256_file(root / name) != declared:
            raise PackageError(f"{name} does not match its sha256 in {COMPOSITION_FILE} (tampered or corrupted)")
    check_tensors(spec, read_safetensors_header(root / ROUTER_FILE))
    return spec


def read_composition(comp_dir: str | Path) -> tuple[CompositionSpec, dict[str, Any]]:
    """Verify and load a composition: (spec, router tensors)."""
    from safetensors.torch import load_file

    spec = verify_composition(comp_dir)
    tensors = load_file(str(Path(comp_dir) / ROUTER_FILE))
    check_tensors(spec, tensors)
    return spec, tensors
