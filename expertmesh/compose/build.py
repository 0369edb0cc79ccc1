"""Build a composition from expert packages: verify the members, build the router artifacts, write the package.

    from expertmesh.compose import build_composition
    spec, tensors = build_composition("clinic", "experts/", "retrieve", out="compositions/clinic", top_m=2)

No base model is needed for the built-in router types: the members' manifests carry the base fingerprint
(all must agree) and their signatures carry the rows and pilots. Router types that need the base (``mot``)
receive it through ``base=``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from expertmesh.compose.routers import get_router
from expertmesh.compose.spec import CompositionSpec, MemberRef, write_composition
from expertmesh.errors import BaseMismatchError, ConfigError, PackageError


def expert_package_dirs(expert_dirs: dict[str, str | Path] | list[str | Path] | str | Path) -> dict[str, Path]:
    """Name -> package dir from a dict, a list of package dirs, or one directory holding packages."""
    from expertmesh.expert.package import read_manifest

    if isinstance(expert_dirs, dict):
        return {k: Path(v) for k, v in expert_dirs.items()}
    if isinstance(expert_dirs, (str, Path)):
        root = Path(expert_dirs)
        if not root.is_dir():
            raise ConfigError(f"expert directory {root} does not exist")
        dirs = [p for p in sorted(root.iterdir()) if (p / "manifest.json").is_file()]
        if not dirs:
            raise ConfigError(f"{root} holds no expert packages (subdirectories with a manifest.json)")
    else:
        dirs = [Path(p) for p in expert_dirs]
    out: dict[str, Path] = {}
    for d in dirs:
        name = read_manifest(d).name
        if name in out:
            raise ConfigError(f"two packages for expert {name!r}: {out[name]} and {d}; pick one version")
        out[name] = d
    return out


def load_members(expert_dirs, base_fingerprint: str | None = None, *, weights: bool = True) -> list:
    """Load and verify every member; all must share one base (BaseMismatchError names the odd one out).
    ``weights=False`` reads manifests and signatures only (the LoRA weights are not opened)."""
    from expertmesh.mixture.lora_io import load_expert

    dirs = expert_package_dirs(expert_dirs)
    if not dirs:
        raise ConfigError("a composition needs at least one expert")
    experts = [load_expert(d, expected_fingerprint=base_fingerprint, name=n, weights=weights)
               for n, d in dirs.items()]
    fps = {e.manifest.base_fingerprint for e in experts}
    if len(fps) > 1:
        by_fp: dict[str, list[str]] = {}
        for e in experts:
            by_fp.setdefault(e.manifest.base_fingerprint[:12], []).append(e.name)
        raise BaseMismatchError(f"experts were trained on different bases {by_fp}; one composition needs one base",
                                detail={"bases": by_fp})
    embedders = {e.manifest.signature.embedder for e in experts}
    if len(embedders) > 1:
        raise PackageError(f"members' pilots come from different embedders {sorted(embedders)}")
    return experts


def build_composition(name: str, expert_dirs, router_type: str = "domain", *, base=None,
                      out: str | Path | None = None, overwrite: bool = False, top_k: int | None = None,
                      top_m: int | None = None, temperature: float = 1.0, selection: str | None = None,
                      score_temperature: float | None = None, min_score: float | None = None,
                      pilot_score: str = "mean",
                      description: str = "",
                      provenance: dict[str, Any] | None = None, versions: dict[str, int] | None = None,
                      **router_options) -> tuple[CompositionSpec, dict]:
    """Build (and with ``out``, write) a composition of the given experts; returns (spec, tensors).

    base: a loaded Base (its fingerprint is checked; router types that train may use it) or None.
    versions: registry versions of the members, when the packages' manifests do not carry them.
    """
    router = get_router(router_type)
    # The built-in router types read only signatures (rows, pilots); a type that trains on the experts
    # (mot) says so with needs_expert_weights.
    experts = load_members(expert_dirs, base.fingerprint if base is not None else None,
                           weights=router.needs_expert_weights)
    tensors = router.build_tensors(experts, base, dict(router_options))
    defaults = dict(router.default_options)
    opts = {"top_k": top_k if top_k is not None else defaults.get("top_k", 2),
            "top_m": top_m if top_m is not None else defaults.get("top_m"),
            "selection": selection or defaults.get("selection", "token")}
    if opts["top_m"] is not None:
        opts["top_m"] = min(opts["top_m"], len(experts))
    members = []
    for e in experts:
        ref = MemberRef.from_manifest(e.manifest, name=e.name)
        if versions and e.name in versions:
            ref.version = versions[e.name]
        members.append(ref)
    prov = {"builder": "expertmesh.compose.build_composition",
            "router_options": {k: str(v) for k, v in router_options.items()},
            **({"base": str(base.path)} if base is not None else {}), **(provenance or {})}
    spec = CompositionSpec(name=name, base_fingerprint=experts[0].manifest.base_fingerprint, router_type=router_type,
                           members=members, temperature=temperature, description=description,
                           embedder=experts[0].manifest.signature.embedder, provenance=prov,
                           **({"score_temperature": score_temperature} if score_temperature is not None else {}),
                           min_score=min_score, pilot_score=pilot_score, **opts)
    if out is not None:
        spec = write_composition(out, spec, tensors, overwrite=overwrite)
    return spec, tensors
