"""Client-side differential privacy on router (or MoT) updates, with Flower's own DP building blocks.

Two modes (router_training.config.DPConfig):

  central  client: ``fixedclipping_mod`` clips the update (new - old arrays) to L2 norm C before it leaves;
           server: ``DifferentialPrivacyClientSideFixedClipping`` adds N(0, (z C / n)^2) per coordinate to the
           average of n clients. The server sees clipped but un-noised individual updates (trusted aggregator).
  local    client: ``LocalDpMod`` clips to C and adds N(0, (C sqrt(2 ln(1.25/delta)) / epsilon)^2) itself, so
           not even the server sees an un-noised update ((epsilon, delta) per round per owner).

Which mode runs is announced by the server in the round's ConfigRecord ("dp-mode" ...); an owner can insist
on local DP whatever the server says (``OwnerSetup.local_dp``). Flower's rule applies under central DP: a
round in which any sampled owner fails is skipped, not aggregated.

Scale: the gate reads a row through h~ . row / sqrt(d) with rms(h~) = 1, so per-coordinate noise of std s on
the rows moves each gate logit by ~s; that, not the update's total norm, is what costs accuracy.
"""
from __future__ import annotations

import math

from router_training.config import DPConfig

KEY_MODE, KEY_EPS, KEY_DELTA = "dp-mode", "dp-epsilon", "dp-delta"


def announce(dp: DPConfig) -> dict:
    """Config entries the server adds to every training round (the clipping norm is added by Flower's wrapper
    in central mode and by us in local mode)."""
    out = {KEY_MODE: dp.mode}
    if dp.mode == "local":
        from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

        out.update({KEY_CLIPPING_NORM: float(dp.clipping_norm), KEY_EPS: float(dp.epsilon), KEY_DELTA: float(dp.delta)})
    return out


def wrap_strategy(strategy, dp: DPConfig, num_sampled_clients: int):
    """The server-side half: central mode wraps the strategy in Flower's client-side-clipping DP wrapper."""
    if dp.mode != "central":
        return strategy
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    return DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=dp.noise_multiplier,
                                                      clipping_norm=dp.clipping_norm,
                                                      num_sampled_clients=num_sampled_clients)


def local_noise_std(clipping_norm: float, epsilon: float, delta: float) -> float:
    """Per-coordinate std LocalDpMod adds (Gaussian mechanism with sensitivity = clipping norm)."""
    return clipping_norm * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def central_noise_std(clipping_norm: float, noise_multiplier: float, clients: int) -> float:
    return noise_multiplier * clipping_norm / clients


def make_dp_mod(owner_local_dp: dict | None = None):
    """A ClientApp mod that applies the DP mode announced for the round (or the owner's own local DP)."""

    def dp_mod(msg, ctxt, call_next):
        from flwr.app import MessageType
        from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
        from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        if owner_local_dp:
            d = DPConfig.from_dict({"mode": "local", **owner_local_dp})
            return LocalDpMod(d.clipping_norm, d.clipping_norm, d.epsilon, d.delta)(msg, ctxt, call_next)
        cfg = next(iter(msg.content.config_records.values()), {})
        mode = cfg.get(KEY_MODE, "none")
        if mode == "central":
            return fixedclipping_mod(msg, ctxt, call_next)
        if mode == "local":
            clip = float(cfg[KEY_CLIPPING_NORM])
            return LocalDpMod(clip, clip, float(cfg[KEY_EPS]), float(cfg[KEY_DELTA]))(msg, ctxt, call_next)
        return call_next(msg, ctxt)

    return dp_mod
