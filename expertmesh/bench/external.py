"""Methods that need parts built elsewhere in the project (expertmesh.compose, router_training).

Each is guarded: if the import fails or the part lacks what the method needs, the method raises
MethodUnavailable with the reason and the results say 'not available in this build'.
"""
from __future__ import annotations

import importlib

from expertmesh.bench.methods import Context, MethodUnavailable, method


def _need(module: str):
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means the part is not in this build
        raise MethodUnavailable(f"not available in this build ({module}: {type(e).__name__}: {e})") from None


def _peft_merge(ctx: Context, combination_type: str, **kw) -> dict[str, float]:
    """Merge the expert packages with PEFT's add_weighted_adapter on a fresh copy of the base; plain LoRA, no gate."""
    import torch

    from expertmesh.base import load_base
    from expertmesh.bench.methods import loss_of

    try:
        from peft import PeftModel
    except Exception as e:  # noqa: BLE001
        raise MethodUnavailable(f"not available in this build (peft: {e})") from None
    paths = ctx.extras["expert_paths"]
    names = list(ctx.expert_domains)
    fresh = load_base(ctx.base_spec).model
    pm = PeftModel.from_pretrained(fresh, str(paths[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(str(paths[n]), adapter_name=n)
    pm.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type=combination_type, **kw)
    pm.set_adapter("merged")
    pm.eval()
    with torch.inference_mode():
        out = {d: loss_of(ctx.token_logprobs(lambda ids: pm(input_ids=ids).logits, ctx.blocks[d]))
               for d in ctx.eval_domains}
    del pm, fresh
    return out


@method("ties-merge", "baseline", "TIES merge of the expert LoRAs (PEFT add_weighted_adapter, combination "
                                  "ties_svd, density 0.5, weights 1; plain merged LoRA, no gate)")
def m_ties(ctx: Context):
    rank = max(e.rank for e in ctx.experts)
    return {"ties-merge": {"losses": _peft_merge(ctx, "ties_svd", density=0.5, svd_rank=rank)}}


@method("federated-tuned-router", "federated", "router rows tuned with Flower federated rounds (router_training)")
def m_tuned(ctx: Context):
    _need("router_training")
    raise MethodUnavailable("not available in this build (router_training has no tuned-router entry point yet)")


@method("mot", "federated", "Mixture-of-Thoughts: top-K experts + trained interaction layers (router_training)")
def m_mot(ctx: Context):
    _need("router_training")
    raise MethodUnavailable("not available in this build (router_training has no MoT entry point yet)")


@method("fedavg-lora", "federated", "one LoRA trained with FedAvg over the owners (Flower, router_training)")
def m_fedavg(ctx: Context):
    _need("router_training")
    raise MethodUnavailable("not available in this build (router_training has no FedAvg LoRA entry point yet)")
