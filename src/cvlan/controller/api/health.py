"""Management API: peer health -- a CVLAN's reachability matrix and the tenant's degradation events
(/api/v1/tenants/{tenant}/cvlans/{cvlan}/health, /api/v1/tenants/{tenant}/health/events; see
docs/HEALTH.md)."""

from __future__ import annotations

from typing import Any

from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import Call
from cvlan.controller.ops import health
from cvlan.controller.ops.context import Tx


@tenant_route(
    "GET",
    "/cvlans/{cvlan}/health",
    summary="Reachability matrix of a CVLAN (unhealthy pairs first), its events and 24 h history",
    tag="health",
)
async def cvlan_health(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
    return await health.cvlan_health(c.ctx, s, c.who, t, c.params["cvlan"])


@tenant_route(
    "GET",
    "/health/events",
    summary="Peer health degradations and recoveries in the tenant, newest first",
    tag="health",
    query=("limit",),
)
async def health_events(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
    raw = c.q("limit") or "100"
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise DomainError(Kind.INVALID, "limit: expected 1-1000", {"field": "limit"})
    items = await health.tenant_events(s, c.who, t, int(raw))
    return {"items": items, "total": len(items)}
