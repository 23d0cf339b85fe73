"""Management API: re-authentication requests of nodes whose certificate expired and that asked
without a token (/api/v1/tenants/{tenant}/reauth-requests, .../nodes/{node}/reauth/approve and /reject)."""

from __future__ import annotations

from typing import Any

from cvlan.controller.api.common import TenantHandler, tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Call
from cvlan.controller.ops import reauth
from cvlan.controller.ops.context import Tx


@tenant_route("GET", "/reauth-requests", summary="List the nodes asking to re-authenticate", tag="nodes")
async def list_reauth_requests(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
    rows = await reauth.list_requests(s, c.who, t)
    return {"items": [reauth.request_view(r, n) for r, n in rows], "total": len(rows)}


def _decider(approve: bool) -> TenantHandler:
    async def decide(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
        r, n = await reauth.decide(c.ctx, s, c.who, t, c.params["node"], approve)
        return reauth.request_view(r, n)

    decide.__name__ = "approve_reauth" if approve else "reject_reauth"
    return decide


for _decision, _approve in (("approve", True), ("reject", False)):
    tenant_route(
        "POST",
        f"/nodes/{{node}}/reauth/{_decision}",
        summary=f"{_decision.capitalize()} a node's pending re-authentication request (admin)",
        tag="nodes",
    )(_decider(_approve))
