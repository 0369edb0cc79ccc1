"""Flower ClientApp: what a data owner runs. It trains the composition's router (or MoT) on private data.

Per training message: check the composition digest the server announced against the owner's own copy (a
mismatch is answered with an error reply naming both versions, never with an update), load the server's
arrays into the owner's model, train a few local steps on the owner's blocks, reply with the new arrays and
{"num-examples": tokens trained, "train-loss", "update-norm"}. Per evaluation message: held-out loss of the
server's arrays on the owner's held-out split. Raw text never leaves; only the arrays and these numbers do.

Deployment (one SuperNode per owner; see router_training/README.md): the owner's paths come from the
SuperNode's node config: ``--node-config 'composition="..." experts="..." data="..." base="..."'``
(optional ``owner="clinic"``, ``local-dp-epsilon=8.0``). Simulation: ``make_client_app(owners)``, where the
simulated node with partition-id i is ``owners[i]``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from expertmesh.errors import ExpertMeshError
from router_training.dp import make_dp_mod
from router_training.kinds import CompositionMismatchError, check_composition, composition_digest, get_kind, \
    load_for_kind

MISMATCH_PREFIX = "composition_mismatch:"


@dataclass
class OwnerSetup:
    """What one owner's SuperNode holds: its copy of the composition + expert packages, and its private data."""

    composition: str | None            # None for kinds that need only the base (the LoRA baseline)
    experts: str | None
    data: str                          # corpus dir with train.jsonl / heldout.jsonl (or a .jsonl/.txt)
    base: str | None = None            # base model dir (default: the composition's provenance / default base)
    owner: str = ""
    local_dp: dict | None = None       # owner-enforced local DP, e.g. {"epsilon": 8.0, "clipping_norm": 1.0}

    @classmethod
    def from_node_config(cls, cfg) -> "OwnerSetup":
        if "data" not in cfg:
            raise ExpertMeshError("SuperNode node config lacks data; start it with --node-config "
                                  "'composition=\"DIR\" experts=\"DIR\" data=\"DIR\"'")
        local = {"epsilon": float(cfg["local-dp-epsilon"]),
                 "clipping_norm": float(cfg.get("local-dp-clip", 1.0))} if "local-dp-epsilon" in cfg else None
        return cls(composition=str(cfg["composition"]) if cfg.get("composition") else None,
                   experts=str(cfg["experts"]) if cfg.get("experts") else None, data=str(cfg["data"]),
                   base=str(cfg["base"]) if cfg.get("base") else None, owner=str(cfg.get("owner", "")),
                   local_dp=local)


# One loaded composition per process: Ray actors (simulation) and long-lived ClientApp processes reuse it
# across rounds instead of reloading the base and every expert each round.
_LOADED: dict = {}
_BLOCKS: dict = {}


def _loaded_for(owner: OwnerSetup, kind_name: str, options: dict, expected: str):
    """The owner's loaded model for this kind, reloaded when the composition on disk changed; a version other
    than the server's raises CompositionMismatchError (checked before anything heavy is loaded)."""
    kind = get_kind(kind_name)
    key = (owner.composition, owner.experts, owner.base, kind_name, json.dumps(options, sort_keys=True))
    if kind.needs_composition:
        check_composition(expected, composition_digest(owner.composition), where=f"owner {owner.owner or owner.data}")
    cached = _LOADED.get(key)
    if cached is None or cached.version != expected:
        for old in list(_LOADED.values()):
            old.close()
        _LOADED.clear()
        _LOADED[key] = load_for_kind(kind, owner.composition, owner.experts, owner.base, options,
                                     expected_version=expected)
    return kind, _LOADED[key]


def _blocks(owner: OwnerSetup, tokenizer, seq_len: int, split: str, max_blocks: int | None = None):
    from router_training.task import load_blocks

    key = (owner.data, seq_len, split, max_blocks)
    if key not in _BLOCKS:
        _BLOCKS[key] = load_blocks(tokenizer, owner.data, seq_len, split=split, max_blocks=max_blocks)
    return _BLOCKS[key]


def _owner_name(owner: OwnerSetup, context: Context) -> str:
    return owner.owner or Path(owner.data).name or f"node-{context.node_id}"


def _error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _prepare(msg: Message, owner: OwnerSetup):
    """The round's config, train config, kind and loaded model, with the server's arrays set.

    A composition other than the server's raises CompositionMismatchError (``_rejecting_mismatch`` replies)."""
    cfg = msg.content["config"]
    options = json.loads(str(cfg.get("kind-options", "{}")))
    kind, loaded = _loaded_for(owner, str(cfg.get("kind", "router")), options, str(cfg["composition-digest"]))
    kind.set_arrays(loaded.model, msg.content["arrays"].to_torch_state_dict())
    return cfg, json.loads(str(cfg["train-config"])), kind, loaded


def _rejecting_mismatch(handler):
    """Answer a composition-version mismatch with an error reply the server recognises (MISMATCH_PREFIX)."""
    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context, owner: OwnerSetup) -> Message:
        try:
            return handler(msg, context, owner)
        except CompositionMismatchError as e:
            return _error_reply(msg, f"{MISMATCH_PREFIX} {e.message}")
    return wrapped


@_rejecting_mismatch
def train_owner(msg: Message, context: Context, owner: OwnerSetup) -> Message:
    cfg, train_cfg, kind, loaded = _prepare(msg, owner)
    model = loaded.model
    blocks = _blocks(owner, loaded.base.tokenizer, kind.seq_len(train_cfg), "train")
    # Each owner and round draws different batches; reproducible from (seed, round, owner).
    seed = int(hashlib.sha256(f"{cfg.get('seed', 0)}/{cfg['server-round']}/{_owner_name(owner, context)}".encode())
               .hexdigest()[:8], 16)
    before = kind.arrays(model)
    stats = kind.train(model, blocks, train_cfg, seed)
    after = kind.arrays(model)
    last = stats.get("last_loss", stats.get("last_lm_loss", math.nan))
    metrics = MetricRecord({"num-examples": int(stats["tokens"]), "train-loss": float(last),
                            "update-norm": float(update_norm_any(before, after)),
                            "seconds": float(stats["seconds"])})
    return Message(RecordDict({"arrays": ArrayRecord(after), "metrics": metrics,
                               "owner": ConfigRecord({"owner": _owner_name(owner, context)})}), reply_to=msg)


@_rejecting_mismatch
def evaluate_owner(msg: Message, context: Context, owner: OwnerSetup) -> Message:
    _cfg, train_cfg, kind, loaded = _prepare(msg, owner)
    model = loaded.model
    max_blocks = int(train_cfg.get("eval_blocks", 16))
    blocks = _blocks(owner, loaded.base.tokenizer, kind.seq_len(train_cfg), "heldout", max_blocks)
    loss = kind.evaluate(model, blocks, train_cfg)
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": int(len(blocks)), "eval-loss": float(loss)}),
                               "owner": ConfigRecord({"owner": _owner_name(owner, context)})}), reply_to=msg)


def update_norm_any(before: dict, after: dict) -> float:
    return math.sqrt(sum(float((after[k].float() - before[k].float()).pow(2).sum()) for k in before))


def make_client_app(owners: list[OwnerSetup] | None = None) -> ClientApp:
    """ClientApp over ``owners`` (simulation: node partition-id i is owners[i]) or over the node config."""

    def owner_of(context: Context) -> OwnerSetup:
        if owners is None:
            return OwnerSetup.from_node_config(context.node_config)
        return owners[int(context.node_config["partition-id"]) % len(owners)]

    app = ClientApp()

    @app.train(mods=[_owner_dp_mod(owner_of)])
    def train(msg: Message, context: Context) -> Message:
        return train_owner(msg, context, owner_of(context))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return evaluate_owner(msg, context, owner_of(context))

    return app


def _owner_dp_mod(owner_of):
    def mod(msg, ctxt, call_next):
        return make_dp_mod(owner_of(ctxt).local_dp)(msg, ctxt, call_next)
    return mod


# `flwr run` / SuperNode entry point (router_training.client_app:app): owners configured by node config.
app = make_client_app()
