"""Management API routes of peer health: a CVLAN's reachability matrix and the degradation events
(see docs/HEALTH.md)."""

from __future__ import annotations

from typing import Any

from cvlan.controller.api.framework import Call, route
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.health.book import HealthBook
from cvlan.controller.nodeapi.handlers import NODEAPI_KEY
from cvlan.controller.ops import health
from cvlan.controller.ops.context import resolve_tenant

T = "/api/v1/tenants/{tenant}"


def _book(c: Call) -> HealthBook:
    return c.request.app[NODEAPI_KEY].health_book


@route(
    "GET",
    T + "/cvlans/{cvlan}/health",
    summary="Reachability matrix of a CVLAN (unhealthy pairs first), its events and 24 h history",
    tag="health",
)
async def cvlan_health(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        return await health.cvlan_health(c.ctx, s, c.who, t, c.params["cvlan"], _book(c))


@route(
    "GET",
    T + "/health/events",
    summary="Peer health degradations and recoveries in the tenant, newest first",
    tag="health",
    query=("limit",),
)
async def health_events(c: Call) -> dict[str, Any]:
    raw = c.q("limit") or "100"
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise DomainError(Kind.INVALID, "limit: expected 1-1000", {"field": "limit"})
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        items = await health.tenant_events(s, c.who, t, _book(c), int(raw))
    return {"items": items, "total": len(items)}
