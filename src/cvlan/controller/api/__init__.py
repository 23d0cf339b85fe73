"""The management API (/api/v1): one module a resource, each declaring its routes in the shared route
table (controller/http/framework.py) when imported; importing this package declares them all."""

from cvlan.controller.api import (  # noqa: F401  (each module registers its routes)
    audit,
    common,
    cvlans,
    dns,
    health,
    nodes,
    oidc,
    policies,
    reauth,
    regions,
    relays,
    subnet_routes,
    tenants,
    tokens,
    users,
    vrouters,
)

__all__ = [
    "audit",
    "common",
    "cvlans",
    "dns",
    "health",
    "nodes",
    "oidc",
    "policies",
    "reauth",
    "regions",
    "relays",
    "subnet_routes",
    "tenants",
    "tokens",
    "users",
    "vrouters",
]
