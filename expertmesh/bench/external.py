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


@method("ties-merge", "baseline", "TIES merge of the expert LoRAs (expertmesh.compose, PEFT add_weighted_adapter)")
def m_ties(ctx: Context):
    _need("expertmesh.compose")
    raise MethodUnavailable("not available in this build (expertmesh.compose has no merge baseline yet)")


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
