"""Composition: a named, versioned set of expert versions + router artifacts + policy, and its runtime.

    spec.py      CompositionSpec / MemberRef, write_composition / read_composition (the package format)
    routers/     router types by name (domain, retrieve, tuned; mot registers itself from router_training)
    selector.py  RouterRetriever pilot index; plan.py: per-request opt-in/opt-out and candidate selection
    runtime.py   CompositionRuntime: load, plan, logits, generate, live withdrawal
    build.py     build_composition from expert packages
"""
from expertmesh.compose.build import build_composition
from expertmesh.compose.plan import FALLBACK_NOTE, RoutingPlan
from expertmesh.compose.routers import RouterType, get_router, known_router_types, register_router
from expertmesh.compose.runtime import CompositionRuntime, Generation, drop_members
from expertmesh.compose.spec import (
    CompositionSpec, MemberRef, expert_digest, read_composition, verify_composition, write_composition,
)

__all__ = ["CompositionSpec", "MemberRef", "expert_digest", "read_composition", "verify_composition",
           "write_composition", "RouterType", "register_router", "get_router", "known_router_types",
           "CompositionRuntime", "Generation", "RoutingPlan", "FALLBACK_NOTE", "build_composition", "drop_members"]
