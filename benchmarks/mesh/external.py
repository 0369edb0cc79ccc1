"""Methods built on the project's other parts: composition baselines (expertmesh.compose) and the federated
trainers (router_training), imported directly: the bench is an app above both.
"""
from __future__ import annotations

from benchmarks.mesh.methods import Context, method


@method("ties-merge", "baseline", "TIES merge of the expert LoRAs (expertmesh.compose.baselines.merge_experts: "
                                  "PEFT add_weighted_adapter ties_svd, density 0.5, weights 1; the merged LoRA is "
                                  "applied in full, no gate)")
def m_ties(ctx: Context):
    import torch

    from benchmarks.mesh.methods import loss_of

    from expertmesh.compose.baselines import MergedModel, merge_experts

    rank = max(e.rank for e in ctx.experts)
    merged = merge_experts(ctx.base.model, {d: ctx.extras["expert_paths"][d] for d in ctx.expert_domains},
                           combination_type="ties_svd", weights=[1.0] * len(ctx.experts), density=0.5,
                           svd_rank=rank, name="ties")
    mm = MergedModel(ctx.base.model, merged)
    try:
        with torch.inference_mode():
            losses = {d: loss_of(ctx.token_logprobs(mm.logits, ctx.blocks[d])) for d in ctx.eval_domains}
    finally:
        mm.close()
    return {"ties-merge": {"losses": losses, "implementation": "expertmesh.compose.baselines"}}


def _owner_blocks(ctx: Context, max_blocks: int = 64) -> dict:
    """Each owner's own training blocks (never pooled for the federated methods)."""
    from benchmarks.mesh.data import read_texts
    from expertmesh.expert.blocks import pack_blocks

    return {d: pack_blocks(ctx.base.tokenizer, read_texts(ctx.corpora[d] / "train.jsonl"), ctx.cfg.seq_len,
                           max_blocks=max_blocks, what=f"train {d}") for d in ctx.expert_domains}


def _fedavg_rounds(ctx: Context, owners: dict, rounds: int, *, get, put, train, weight) -> list[dict]:
    """In-process FedAvg (no Flower transport): each round every owner starts from the global arrays and trains
    on its own blocks; the global becomes the mean of their arrays weighted by ``weight(owner, stats)``. Leaves
    the final global arrays in the model and returns the per-owner training history."""
    history = []
    glob = get()
    for r in range(rounds):
        updates = []
        for j, d in enumerate(ctx.expert_domains):
            put(glob)
            st = train(owners[d], ctx.cfg.seed + 1000 * r + j)
            updates.append((weight(d, st), get()))
            history.append({"round": r, "owner": d, "first_loss": st["first_loss"], "last_loss": st["last_loss"]})
        total = sum(n for n, _ in updates)
        glob = {k: sum(n * u[k] for n, u in updates) / total for k in glob}
    put(glob)
    return history


# MoT trains ~0.7M parameters (the router: ~50k), so it gets its own step budget rather than the router's.
MOT_STEPS = {"tiny": 4, "quick": 24, "full": 80}


def _budget(ctx: Context) -> tuple[int, int]:
    """(rounds, local steps) of router tuning per mode."""
    return {"tiny": (2, 2), "quick": (2, 3), "full": (5, 8)}[ctx.cfg.mode]


@method("federated-tuned-router", "federated", "router rows + bias tuned by FedAvg rounds over the owners, each "
                                               "tuning on its own data only (router_training.task.tune_router; "
                                               "rounds run in-process, no Flower transport), then the token gate k=2")
def m_tuned(ctx: Context):
    import torch

    from benchmarks.mesh.methods import loss_of

    from router_training import config, task

    cfg = ctx.cfg
    rounds, steps = _budget(ctx)
    tc = config.TuneConfig(steps=steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed)
    owners = _owner_blocks(ctx)
    with ctx.composed(top_k=2) as cm:
        history = _fedavg_rounds(ctx, owners, rounds, get=lambda: task.router_arrays(cm),
                                 put=lambda a: task.set_router_arrays(cm, a),
                                 train=lambda blocks, seed: task.tune_router(cm, blocks, tc, seed=seed),
                                 weight=lambda d, st: len(owners[d]))
        task.freeze_router(cm)
        cm.eval()
        with torch.inference_mode():
            losses = {d: loss_of(ctx.token_logprobs(lambda ids: cm(ids).logits, ctx.blocks[d]))
                      for d in ctx.eval_domains}
    return {"federated-tuned-router": {"losses": losses, "rounds": rounds, "local_steps": steps,
                                       "tuning_tokens": rounds * len(owners) * steps * cfg.batch_size * cfg.seq_len,
                                       "history": history}}


@method("mot", "federated", "Mixture-of-Thoughts (expertmesh.compose.routers.mot, trained by router_training): selector + interaction layers over the "
                            "frozen experts (gated streams), trained centrally on the owners' pooled blocks; "
                            "scored after the selector's prefix, see the like-for-like note")
def m_mot(ctx: Context):
    import torch

    from expertmesh.compose.routers.mot import model as mot_mod
    from router_training import mot_train as mt

    cfg = ctx.cfg
    owners = _owner_blocks(ctx)
    g = torch.Generator().manual_seed(cfg.seed)
    pooled = torch.cat(list(owners.values()))
    pooled = pooled[torch.randperm(len(pooled), generator=g)]
    start = max(1, min(32, cfg.seq_len // 4))
    mcfg = mot_mod.MoTConfig(top_k=2, select_tokens=start)
    tcfg = mt.MoTTrainConfig(steps=MOT_STEPS[cfg.mode], batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                             seed=cfg.seed)
    losses, like, base_like = {}, {}, {}
    public = torch.zeros(1, len(ctx.experts) + 1)
    public[0, 0] = 1.0
    with ctx.composed(top_k=2) as cm:
        mot = mot_mod.MoTModel(cm, mcfg)
        try:
            stats = mt.train_mot(mot, pooled, tcfg)
            mot.eval()
            for d in ctx.eval_domains:
                losses[d] = float(mt.evaluate_mot(mot, ctx.blocks[d], start=start, batch_size=4)["loss"])
                like[d] = float(mt.evaluate_composed_from(cm, ctx.blocks[d], start=start, batch_size=4))
                base_like[d] = float(mt.evaluate_composed_from(cm, ctx.blocks[d], start=start, batch_size=4,
                                                               fixed_weights=public))
        finally:
            mot.close()
    ctx.extras["mot_like_for_like"] = {"start": start, "mot": losses, "domain-router-k2": like}
    return {"mot": {"losses": losses, "scored_from_token": start, "train": stats,
                    "domain_router_k2_same_positions": like, "base_same_positions": base_like}}


@method("fedavg-lora", "federated", "one LoRA trained by FedAvg rounds over the owners, each on its own data only "
                                   "(router_training.fedavg_lora; rounds in-process, no Flower transport), the "
                                   "experts' total token budget, applied at weight 1")
def m_fedavg(ctx: Context):
    import torch

    from expertmesh.base import load_base
    from benchmarks.mesh.experts import lora_targets
    from benchmarks.mesh.methods import loss_of

    from router_training import config
    from router_training import fedavg_lora as fl

    cfg = ctx.cfg
    rounds = {"tiny": 2, "quick": 4, "full": 6}[cfg.mode]
    local = max(1, cfg.steps // rounds)          # every owner trains about its expert's steps: same total budget
    tc = config.TuneConfig(steps=local, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, seed=cfg.seed)
    owners = _owner_blocks(ctx)
    # A fresh base: the LoRA wraps the base's linear layers in place, and ctx.base serves the other methods.
    model = fl.build_lora_model(load_base(ctx.base_spec), {"r": cfg.rank, "alpha": 2.0 * cfg.rank, "dropout": 0.0,
                                                           "target_modules": lora_targets(cfg),
                                                           "init_seed": cfg.seed})
    try:
        history = _fedavg_rounds(ctx, owners, rounds, get=lambda: fl.lora_arrays(model),
                                 put=lambda a: fl.set_lora_arrays(model, a),
                                 train=lambda blocks, seed: fl.train_lora(model, blocks, tc, seed=seed),
                                 weight=lambda d, st: st["tokens"])
        model.eval()
        on = fl.FIXED_ON
        with torch.inference_mode():
            losses = {d: loss_of(ctx.token_logprobs(lambda ids: model(ids, fixed_weights=on.expand(len(ids), -1)).logits,
                                                    ctx.blocks[d]))
                      for d in ctx.eval_domains}
    finally:
        model.close()
    return {"fedavg-lora": {"losses": losses, "rounds": rounds, "local_steps": local, "history": history,
                            "train_tokens": rounds * len(owners) * local * cfg.batch_size * cfg.seq_len}}
