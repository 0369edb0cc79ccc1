"""``domain``: FlexOlmo's domain-informed router. Each member's router row (initialised by its owner from the
mean hidden state of its own data, then trained against the public anchor) is concatenated as is; nothing is
trained at merge time, so adding or dropping a member is adding or dropping a row."""
from __future__ import annotations

from expertmesh.compose.routers import RouterType, register_router


@register_router("domain")
class DomainRouter(RouterType):
    default_options = {"selection": "token"}
    needs_expert_weights = False
