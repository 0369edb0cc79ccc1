"""The owner-side leakage audit: what someone holding the published expert can recover of the training text.

Run on the owner's machine, on the owner's corpus, before publishing (``expertmesh expert audit``). It measures
the public base and the expert side by side, with one seed for every sample it draws:

* **Verbatim extraction** (FlexOlmo's metric): windows of ``prefix_tokens + continuation_tokens`` tokens from
  training documents; prompt with the prefix, decode ``continuation_tokens`` greedily; the rate is the share whose
  continuation reproduces the true text for >= ``match_tokens`` leading tokens.
* **Membership inference**: ROC AUC of telling training blocks from held-out blocks of the same corpus by
  (a) the expert's loss alone (score = -loss) and (b) the reference-calibrated score -(expert loss - base loss),
  which removes how hard each block is for any model (Carlini et al. 2022, "LiRA"-style offline reference).
  0.5 = nothing leaks; 1.0 = every member is recognised.
* **Canaries** (``canaries.py``): exposure in bits of the secrets ``expert train --canaries K`` planted.

The result is a small flat dict (``AUDIT_FORMAT``) that ``record_audit`` writes into manifest.json, whose sha256
the registry pins, so the figures travel with the expert and cannot be edited without changing its digest.
Member blocks are the corpus' training documents packed exactly as training packed them (planted canaries
aside, which only move block boundaries); non-members are its held-out documents (split by whole document).

Budget at the defaults (SmolLM2-135M, 2 cores, fp32, an expert trained at seq_len 128): scoring
2 models x 2 sides x 48 blocks x 128 tokens = 49k tokens at ~460 tok/s ~ 105 s; greedy decoding 2 x 32 windows x
64 tokens in one batch of 32 (decode is overhead-bound, so one wide batch runs ~3x the tokens/s of batches of 8);
canaries 2 x (500 + K) x ~20 tokens, with logits (the 49k-wide head) only at the secret's positions. Tiny CPU
variant: see tests/expert/test_audit.py.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from expertmesh.errors import DataError
from expertmesh.expert.digest import data_digest
from expertmesh.expert.manifest import AUDIT_FORMAT
from expertmesh.precision import use_bf16 as resolve_bf16
from expertmesh.validate import check_choice, check_int

log = logging.getLogger("expertmesh.audit")


@dataclass
class AuditConfig:
    prefix_tokens: int = 32
    continuation_tokens: int = 64
    match_tokens: int = 50
    extraction_samples: int = 32
    mia_blocks: int = 48              # per side (members, non-members)
    min_mia_blocks: int = 16          # fewer per side gives an AUC too noisy to mean anything: refuse
    canary_candidates: int = 500
    batch_size: int = 8               # blocks per scoring forward
    generation_batch_size: int = 32   # windows per greedy decode
    seed: int = 0
    precision: str = "auto"           # auto | bf16 | fp32

    def __post_init__(self) -> None:
        check_int("prefix_tokens", self.prefix_tokens, lo=1, hi=4096)
        check_int("continuation_tokens", self.continuation_tokens, lo=1, hi=4096)
        check_int("match_tokens", self.match_tokens, lo=1, hi=self.continuation_tokens)
        check_int("extraction_samples", self.extraction_samples, lo=1, hi=100_000)
        check_int("min_mia_blocks", self.min_mia_blocks, lo=2)
        check_int("mia_blocks", self.mia_blocks, lo=self.min_mia_blocks, hi=100_000)
        check_int("canary_candidates", self.canary_candidates, lo=10, hi=1_000_000)
        check_int("batch_size", self.batch_size, lo=1, hi=4096)
        check_int("generation_batch_size", self.generation_batch_size, lo=1, hi=4096)
        check_int("seed", self.seed, lo=0)
        check_choice("precision", self.precision, ["auto", "bf16", "fp32"])


def roc_auc(members: torch.Tensor, others: torch.Tensor) -> float:
    """P(score(member) > score(non-member)) + 0.5 P(tie): the Mann-Whitney form of the ROC AUC."""
    m, o = members.double()[:, None], others.double()[None, :]
    return float(((m > o).double() + 0.5 * (m == o).double()).mean())


def block_losses(forward, blocks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean next-token loss of each block, [n]."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size]
            logits = forward(ids)[:, :-1].float()
            # [B*T, V] rows: cross_entropy over a transposed [B, V, T] view ran ~5x slower
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                     reduction="none")
            out.append(loss.view(len(ids), -1).mean(1))
    return torch.cat(out)


def extraction_windows(tokenizer, texts: list[str], cfg: AuditConfig) -> torch.Tensor:
    """[n, prefix+continuation] windows cut at multiples of the window length inside training documents (never
    across two), ``extraction_samples`` of them drawn with the seed."""
    width = cfg.prefix_tokens + cfg.continuation_tokens
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows.extend(ids[i:i + width] for i in range(0, len(ids) - width + 1, width))
    if len(windows) < min(cfg.extraction_samples, 8):
        raise DataError(f"the training data holds {len(windows)} windows of {width} tokens inside one document; "
                        f"the extraction test needs at least {min(cfg.extraction_samples, 8)}: give more or longer "
                        "documents")
    picked = random.Random(f"extraction/{cfg.seed}").sample(windows, min(cfg.extraction_samples, len(windows)))
    return torch.tensor(picked, dtype=torch.long)


def extraction_rate(generate, windows: torch.Tensor, cfg: AuditConfig) -> tuple[float, float]:
    """(share of windows reproduced for >= match_tokens leading tokens, mean leading match length)."""
    hits, lengths = 0, []
    p = cfg.prefix_tokens
    for i in range(0, len(windows), cfg.generation_batch_size):
        w = windows[i:i + cfg.generation_batch_size]
        gen = generate(w[:, :p])[:, p:p + cfg.continuation_tokens]
        truth = w[:, p:p + gen.shape[1]]
        same = (gen == truth).long()
        lead = same.cumprod(1).sum(1)                       # length of the leading exact match
        hits += int((lead >= cfg.match_tokens).sum())
        lengths.extend(lead.tolist())
    return hits / len(windows), sum(lengths) / len(lengths)


def _mia_blocks(tokenizer, train_texts, heldout_texts, seq_len, cfg):
    from expertmesh.expert.blocks import pack_blocks

    members = pack_blocks(tokenizer, train_texts, seq_len, what="audit training data")
    others = pack_blocks(tokenizer, heldout_texts, seq_len, what="audit held-out data")
    n = min(len(members), len(others), cfg.mia_blocks)
    if n < cfg.min_mia_blocks:
        raise DataError(f"too little data for membership inference: {len(members)} training and {len(others)} "
                        f"held-out blocks of {seq_len} tokens, and the audit needs >= {cfg.min_mia_blocks} of each "
                        "(an AUC over fewer is noise); add documents to both splits")
    gen = torch.Generator().manual_seed(cfg.seed)
    return (members[torch.randperm(len(members), generator=gen)[:n]],
            others[torch.randperm(len(others), generator=gen)[:n]])


def audit_expert(expert_dir: str | Path, data: str | Path, *, heldout: str | Path | None = None, base=None,
                 cfg: AuditConfig | None = None, canaries: str | Path | None = None) -> dict:
    """Audit one expert package against the owner's corpus; returns the audit dict (see ``record_audit``)."""
    from expertmesh.base import load_base
    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.canaries import canary_path, exposure, load_canaries
    from expertmesh.expert.package import verify_package
    from expertmesh.mixture.lora_io import load_expert
    from expertmesh.mixture.model import ComposedModel

    cfg = cfg or AuditConfig()
    manifest = verify_package(expert_dir)
    tcfg = manifest.training.get("config", {})
    train_texts = load_texts(data)
    heldout = heldout or (Path(data) / "heldout.jsonl" if Path(data).is_dir() else None)
    if heldout is None or not Path(heldout).exists():
        raise DataError(f"the audit needs held-out documents: give a corpus directory with heldout.jsonl or --heldout")
    heldout_texts = load_texts(heldout)
    digest = data_digest(train_texts)
    recorded = manifest.training.get("data_digest")
    matches = None if recorded is None else recorded == digest
    warnings = []
    if matches is False:
        warnings.append(f"the audit corpus {data} does not match the training data recorded in the manifest "
                        f"(sha256 {digest[:12]} vs {str(recorded)[:12]}): the figures describe this corpus, "
                        "not what the expert was trained on")
    elif matches is None:
        warnings.append("the manifest records no training-data digest: cannot check that this is the training data")
    canary_file = Path(canaries) if canaries else canary_path(expert_dir)
    planted = manifest.training.get("canaries") or {}
    canary_set = None
    if canaries or planted.get("count"):
        canary_set = load_canaries(canary_file)
        if planted.get("sha256") and planted["sha256"] != canary_set.digest():
            warnings.append(f"canary file {canary_file} is not the one this expert was trained with")
    for w in warnings:
        log.warning(w)

    b = base if hasattr(base, "model") else load_base(base or (tcfg.get("base") if tcfg.get("base") else None))
    tok = b.tokenizer
    seq_len = int(tcfg.get("seq_len", 256))
    members, others = _mia_blocks(tok, train_texts, heldout_texts, seq_len, cfg)
    windows = extraction_windows(tok, train_texts, cfg)
    use_bf16 = resolve_bf16(cfg.precision)
    expert = load_expert(expert_dir, expected_fingerprint=b.fingerprint)
    model = ComposedModel(b.model, [expert])
    none = torch.zeros(1, dtype=torch.bool)
    eos = tok.eos_token_id
    # forward(ids, keep): logits of the last ``keep`` positions (0 = all); the canaries need only the secret's
    fwd = {"base": lambda ids, keep=0: model(ids, allowed=none, logits_to_keep=keep).logits,
           "expert": lambda ids, keep=0: model(ids, logits_to_keep=keep).logits}

    def gen(allowed):
        return lambda ids: model.generate(ids, attention_mask=torch.ones_like(ids), allowed=allowed,
                                          max_new_tokens=cfg.continuation_tokens, do_sample=False,
                                          pad_token_id=eos)
    out: dict = {}
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = {k: (block_losses(f, members, cfg.batch_size), block_losses(f, others, cfg.batch_size))
                    for k, f in fwd.items()}
            for k, allowed in (("base", none), ("expert", None)):
                rate, mean_len = extraction_rate(gen(allowed), windows, cfg)
                out[f"extraction_rate_{k}"], out[f"extraction_mean_match_{k}"] = round(rate, 4), round(mean_len, 2)
            if canary_set is not None:
                for k, f in fwd.items():
                    e = exposure(f, tok, canary_set, candidates=cfg.canary_candidates, seed=cfg.seed)
                    out[f"canary_exposure_{k}"] = round(sum(e["exposure"]) / len(e["exposure"]), 3)
                    out[f"canary_exposure_max_{k}"] = round(max(e["exposure"]), 3)
                out["canary_log2_space"] = round(e["log2_space"], 3)
                out["canaries"] = len(canary_set.secrets)
    finally:
        model.close()
    for k in ("base", "expert"):
        out[f"mia_auc_{k}"] = round(roc_auc(-loss[k][0], -loss[k][1]), 4)
        out[f"heldout_loss_{k}"] = round(float(loss[k][1].mean()), 4)
        out[f"train_loss_{k}"] = round(float(loss[k][0].mean()), 4)
    out["mia_auc_calibrated"] = round(roc_auc(-(loss["expert"][0] - loss["base"][0]),
                                              -(loss["expert"][1] - loss["base"][1])), 4)
    return {"format": AUDIT_FORMAT, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **dict(sorted(out.items())), "mia_blocks_per_side": len(members), "extraction_windows": len(windows),
            "seq_len": seq_len, "data_digest": digest, "data_matches_training": matches,
            "precision": "bf16" if use_bf16 else "fp32", "settings": asdict(cfg), "warnings": warnings}


def record_audit(expert_dir: str | Path, audit: dict) -> None:
    """Write ``audit`` into manifest.json (the other files and their hashes are unchanged)."""
    from expertmesh.expert.package import read_manifest, verify_package
    from expertmesh.fileio import write_json_atomic
    from expertmesh.expert.manifest import MANIFEST_FILE

    verify_package(expert_dir)
    manifest = read_manifest(expert_dir)
    manifest.audit = json.loads(json.dumps(audit))      # plain JSON types only
    write_json_atomic(Path(expert_dir) / MANIFEST_FILE, manifest.to_dict())
