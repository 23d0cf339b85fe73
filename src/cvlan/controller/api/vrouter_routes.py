"""Management API routes that attach vrouters to a tenant's CVLANs (see docs/VROUTER.md)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cvlan.controller.api.framework import Body, Call, route
from cvlan.controller.ops import vrouters
from cvlan.controller.ops.context import resolve_tenant

P = "/api/v1/tenants/{tenant}/cvlans/{cvlan}/vrouters"


class VrouterAttach(Body):
    vrouter: str = Field(min_length=1, max_length=63)
    """Name or id of a registered vrouter (cvlan vrouter list)."""


@route("GET", P, summary="List the vrouters serving a CVLAN", tag="vrouters")
async def list_cvlan_vrouters(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        items = await vrouters.list_for_cvlan(s, c.who, t, c.params["cvlan"])
    return {"items": items, "total": len(items)}


@route("POST", P, summary="Attach a vrouter to a CVLAN", tag="vrouters", body=VrouterAttach, status=201)
async def attach_vrouter(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        view, changed = await vrouters.attach(c.ctx, s, c.who, t, c.params["cvlan"], c.body.vrouter)
    return {**view, "changed": changed}


@route("DELETE", P + "/{vrouter}", summary="Detach a vrouter from a CVLAN", tag="vrouters", status=204)
async def detach_vrouter(c: Call) -> None:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        await vrouters.detach(c.ctx, s, c.who, t, c.params["cvlan"], c.params["vrouter"])
