"""``retrieve``: RouterRetriever selection in front of the FlexOlmo gate.

A request's prompt is embedded once; a faiss inner-product index over every member's pilot embeddings gives
each member a score (mean similarity over its pilots); the top-m allowed members become the candidate set and
the token-level gate runs among them only (selection "both"), or the top-m are mixed with fixed weights
softmax(score / score_temperature) (selection "sequence"). The tensors are the domain router's plus pilots,
which every composition carries anyway; what this type changes is the default policy.
"""
from __future__ import annotations

from expertmesh.compose.routers import RouterType, register_router


@register_router("retrieve")
class RetrieveRouter(RouterType):
    default_options = {"selection": "both", "top_m": 2}
    needs_expert_weights = False

    def build_tensors(self, experts, base, options):
        from expertmesh.errors import ConfigError

        tensors = super().build_tensors(experts, base, options)
        if "pilots" not in tensors:
            raise ConfigError("router type 'retrieve' needs pilot embeddings in every member's signature")
        return tensors
