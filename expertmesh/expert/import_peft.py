"""Import a plain-PEFT LoRA adapter (``LoraConfig`` + ``save_pretrained``) as an expert package.

The adapter's weights are taken as they are; only the router signature is computed, from the owner's own data
and on the owner's machine, exactly as ``expert train`` computes it (FlexOlmo rows: the mean RMS-normalised
layer input of the owner's text; RouterRetriever pilots: k-means centroids of its passage embeddings). The
held-out metrics compare the base with the adapter gated against the public base (how expertmesh runs it)
and ungated (how plain PEFT ran it during training, gate = 1).

What cannot be composed is refused, each with the field at fault and the fix: another base (checked by
fingerprint, never by name), DoRA, ``modules_to_save``, LoRA biases, per-module rank/alpha patterns, and
target modules that are not linear layers inside the decoder layers (embeddings, ``lm_head``).
``use_rslora`` is converted (alpha' = alpha * sqrt(r) gives the same delta with the plain alpha / r scaling).

Tiny CPU variant (seconds):
    expertmesh expert import peft-out/ --data corpus/law --name law --owner acme --out experts/law --base /tmp/tb
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from expertmesh.base import DEFAULT_BASE, Base, cache_root, load_base
from expertmesh.errors import BaseMismatchError, ConfigError, DataError, PackageError
from expertmesh.expert.blocks import mean_token_loss, pack_blocks
from expertmesh.expert.manifest import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ExpertManifest, LoraSpec, SignatureSpec
from expertmesh.expert.package import finalize_manifest, save_signature
from expertmesh.fileio import atomic_directory, sha256_file
from expertmesh.validate import check_int, check_name, check_str_list

# Config fields whose non-default value changes what the adapter computes in a way the mixture cannot run.
_REFUSED = {
    "use_dora": "DoRA adapters rescale the base weight itself, which the gated mixture cannot route; "
                "retrain with use_dora=False",
    "modules_to_save": "modules_to_save trains full copies of modules, which cannot be gated per token or "
                       "opted out; retrain without modules_to_save",
    "lora_bias": "LoRA bias terms are not supported; retrain with lora_bias=False",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D layers) is not supported; this base uses nn.Linear",
    "rank_pattern": "per-module ranks (rank_pattern) are not supported; use one rank",
    "alpha_pattern": "per-module alphas (alpha_pattern) are not supported; use one lora_alpha",
    "trainable_token_indices": "trainable token embeddings are not supported; retrain without them",
    "target_parameters": "target_parameters (LoRA on raw parameters) is not supported; target linear modules",
    "layer_replication": "layer_replication changes the base's layer stack; retrain without it",
}


@dataclass
class ImportConfig:
    adapter: str                                # plain-PEFT adapter directory
    name: str
    owner: str
    data: str                                   # corpus dir, .jsonl or .txt: signature only, never packaged
    out: str
    heldout: str | None = None                  # default: <data>/heldout.jsonl for a corpus dir
    base: str | None = None                     # base in use (dir or the default)
    trained_on: str | None = None               # base dir the adapter was trained on, if its config names none
    domain_tags: list[str] = field(default_factory=list)
    licence: str = "unspecified"
    description: str = ""
    seq_len: int = 256
    signature_blocks: int = 64
    eval_blocks: int = 32
    num_pilots: int = 8
    embedder: str | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_name("owner", self.owner)
        self.domain_tags = [check_name("domain_tags[]", t) for t in check_str_list("domain_tags", self.domain_tags)]
        check_int("seq_len", self.seq_len, lo=8, hi=32768)
        check_int("signature_blocks", self.signature_blocks, lo=1)
        check_int("eval_blocks", self.eval_blocks, lo=1)
        check_int("num_pilots", self.num_pilots, lo=1, hi=1024)
        if not Path(self.adapter).is_dir():
            raise DataError(f"adapter={self.adapter!r} is not a directory; give the directory that plain PEFT's "
                            "save_pretrained wrote")
        if not Path(self.data).exists():
            raise DataError(f"data={self.data!r} does not exist: give a corpus directory, a .jsonl or a .txt file")
        if self.heldout is None and Path(self.data).is_dir() and (Path(self.data) / "heldout.jsonl").is_file():
            self.heldout = str(Path(self.data) / "heldout.jsonl")
        if self.heldout is not None and not Path(self.heldout).exists():
            raise DataError(f"heldout={self.heldout!r} does not exist")
        if Path(self.out).exists() and not self.overwrite:
            raise ConfigError(f"output {self.out} already exists; choose another --out or pass --overwrite")


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config, checked for what the mixture can compose (no weights are read here)."""
    path = adapter_dir / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise PackageError(f"{adapter_dir} is not a PEFT adapter: {ADAPTER_CONFIG_FILE} is missing")
    if not (adapter_dir / ADAPTER_WEIGHTS_FILE).is_file():
        pickled = (adapter_dir / "adapter_model.bin").is_file()
        raise PackageError(f"{adapter_dir} has no {ADAPTER_WEIGHTS_FILE}" + (
            " (adapter_model.bin is a pickle, which expertmesh never loads: re-save it with "
            "save_pretrained(dir, safe_serialization=True))" if pickled else ""))
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackageError(f"{path}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise PackageError(f"{path}: expected a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise PackageError(f"{path}: peft_type={cfg.get('peft_type')!r}; only LoRA adapters can be imported")
    for key, why in _REFUSED.items():
        if cfg.get(key) not in (None, False, [], {}):
            raise PackageError(f"{path}: {key}={cfg[key]!r}: {why}", detail={"field": key})
    if cfg.get("bias", "none") != "none":
        raise PackageError(f"{path}: bias={cfg['bias']!r}: trained bias terms are not supported; retrain with "
                           "bias='none'", detail={"field": "bias"})
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1 or not isinstance(cfg.get("lora_alpha"), (int, float)):
        raise PackageError(f"{path}: r={r!r} / lora_alpha={cfg.get('lora_alpha')!r} are not a LoRA rank and alpha")
    return cfg


def lora_spec_from(cfg: dict[str, Any], module_paths: list[str]) -> LoraSpec:
    """The manifest's LoraSpec; rsLoRA's alpha / sqrt(r) scaling becomes alpha' / r with alpha' = alpha sqrt(r)."""
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)
    targets = cfg.get("target_modules")
    if not isinstance(targets, list) or not targets:   # a regex string or "all-linear": name what was adapted
        targets = sorted({p.rsplit(".", 1)[-1] for p in module_paths})
    return LoraSpec(r=r, alpha=alpha, dropout=float(cfg.get("lora_dropout") or 0.0), target_modules=list(targets))


def read_adapter_weights(adapter_dir: Path, model, r: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA factors by module path, each checked against the base's layer (a module, shape or key that the
    mixture cannot run is an error naming it)."""
    from safetensors.torch import load_file

    from expertmesh.mixture.lora_io import read_peft_adapter
    from expertmesh.mixture.model import adaptable_modules

    path = adapter_dir / ADAPTER_WEIGHTS_FILE
    keys = list(load_file(str(path)).keys())
    odd = [k for k in keys if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))]
    if odd:
        raise PackageError(f"{path.name} holds tensors that are not LoRA A/B factors, e.g. {odd[0]!r} "
                           "(DoRA magnitudes, embeddings or saved modules cannot be imported)")
    lora = read_peft_adapter(path)
    linears = adaptable_modules(model)
    for module, (a, b) in lora.items():
        layer = linears.get(module)
        if layer is None:
            names = sorted({p.rsplit(".", 1)[-1] for p in linears})
            raise PackageError(f"unsupported target module {module!r}: only linear layers inside the decoder "
                               f"layers can be experts ({', '.join(names)})", detail={"field": "target_modules"})
        if a.shape != (r, layer.in_features) or b.shape != (layer.out_features, r):
            raise BaseMismatchError(
                f"{module}: LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the base's layer "
                f"[{layer.out_features} x {layer.in_features}] at rank {r}: the adapter was trained on another base")
    return lora


def check_trained_on(cfg: dict[str, Any], base: Base, trained_on: str | None) -> str:
    """Fingerprint of the base the adapter was trained on, which must be the base in use. A name that is no
    local directory (a hub id) cannot be fingerprinted: the owner points ``trained_on`` at the directory."""
    named = str(trained_on or cfg.get("base_model_name_or_path") or "")
    if named == DEFAULT_BASE:                     # expertmesh's own name for its converted default base
        named = str(cache_root() / "base" / DEFAULT_BASE)
    path = Path(os.path.expanduser(named)) if named else None
    if path is None or not path.is_dir():
        raise BaseMismatchError(
            f"the adapter names base {named!r}, which is not a local model directory, so its fingerprint cannot "
            "be checked; pass --trained-on DIR (the base directory it was trained on)",
            detail={"field": "base_model_name_or_path"})
    if path.resolve() == Path(base.path).resolve():
        return base.fingerprint
    theirs = load_base(str(path)).fingerprint
    if theirs != base.fingerprint:
        raise BaseMismatchError(
            f"the adapter was trained on base {path} (fingerprint {theirs[:12]}), not on the base in use "
            f"{base.path} ({base.fingerprint[:12]}); pass the same --base it was trained on")
    return theirs


@torch.inference_mode()
def gated_metrics(base: Base, expert, heldout: torch.Tensor, seq_len: int) -> dict[str, Any]:
    """Held-out loss of the base, the gated expert (expertmesh) and the ungated adapter (plain PEFT, gate 1)."""
    from expertmesh.mixture.model import ComposedModel

    composed = ComposedModel(base.model, [expert], top_k=2)
    try:
        base_loss = mean_token_loss(lambda ids: composed(ids, allowed=torch.zeros(1, dtype=torch.bool)).logits,
                                    heldout)
        expert_loss = mean_token_loss(lambda ids: composed(ids).logits, heldout)
        plain = torch.tensor([[0.0, 1.0]])          # [public, expert] sequence weights: y = W x + B A x s
        ungated = mean_token_loss(lambda ids: composed(ids, fixed_weights=plain.expand(len(ids), 2)).logits,
                                  heldout)
    finally:
        composed.close()
    return {"heldout_blocks": len(heldout), "seq_len": seq_len, "base_loss": round(base_loss, 4),
            "expert_loss": round(expert_loss, 4), "ungated_loss": round(ungated, 4),
            "base_ppl": round(math.exp(base_loss), 3), "expert_ppl": round(math.exp(expert_loss), 3)}


def import_peft_adapter(cfg: ImportConfig, *, base: Base | None = None) -> ExpertManifest:
    """Write the expert package for ``cfg.adapter`` to ``cfg.out`` (complete or absent); returns its manifest."""
    from expertmesh.corpora.records import load_texts
    from expertmesh.embedder import get_embedder
    from expertmesh.expert.signature import anchor_rows, mean_layer_inputs, passages, pilot_embeddings
    from expertmesh.mixture.lora_io import ExpertWeights, save_peft_adapter

    adapter = Path(cfg.adapter)
    peft_cfg = read_adapter_config(adapter)
    texts = load_texts(cfg.data)                  # data errors before the base loads
    held_texts = load_texts(cfg.heldout) if cfg.heldout else None
    base = base or load_base(cfg.base)
    fingerprint = check_trained_on(peft_cfg, base, cfg.trained_on)
    lora = read_adapter_weights(adapter, base.model, int(peft_cfg["r"]))
    spec = lora_spec_from(peft_cfg, list(lora))

    blocks = pack_blocks(base.tokenizer, texts, cfg.seq_len, max_blocks=cfg.signature_blocks, what=f"data {cfg.data}")
    anchor = anchor_rows(base.model, base.tokenizer)
    rows = mean_layer_inputs(base.model, blocks)
    embedder = get_embedder(cfg.embedder)
    pilots = torch.from_numpy(pilot_embeddings(embedder.embed(passages(texts)), cfg.num_pilots, cfg.seed))
    expert = ExpertWeights(name=cfg.name, lora=lora, scaling=spec.scaling, router_rows=rows, anchor_rows=anchor,
                           pilots=pilots)
    metrics = {}
    if held_texts is not None:
        heldout = pack_blocks(base.tokenizer, held_texts, cfg.seq_len, max_blocks=cfg.eval_blocks,
                              what=f"held-out data {cfg.heldout}")
        metrics = gated_metrics(base, expert, heldout, cfg.seq_len)
    manifest = ExpertManifest(
        name=cfg.name, owner=cfg.owner, base_fingerprint=fingerprint, lora=spec,
        signature=SignatureSpec(num_layers=base.num_layers, hidden_size=base.hidden_size,
                                num_pilots=int(pilots.shape[0]), embed_dim=int(pilots.shape[1]),
                                embedder=embedder.name),
        domain_tags=cfg.domain_tags or [cfg.name], licence=cfg.licence, description=cfg.description,
        training={"imported_from": "peft", "adapter_config": peft_cfg,
                  "source_sha256": {f: sha256_file(adapter / f) for f in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)},
                  "signature_blocks": len(blocks), "seq_len": cfg.seq_len,
                  "base": str(base.path), "torch": torch.__version__},
        metrics=metrics,
    )
    with atomic_directory(Path(cfg.out), overwrite=cfg.overwrite) as tmp:
        save_peft_adapter(tmp, lora, spec, base_name=str(base.path))
        save_signature(tmp, rows, anchor, pilots)
        finalize_manifest(tmp, manifest)
    return manifest
