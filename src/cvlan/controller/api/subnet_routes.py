"""Management API of subnet routes and exit nodes (see docs/ROUTES.md, docs/EXIT-NODES.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cvlan.controller.api.framework import Body, Call, route
from cvlan.controller.ops import subnets
from cvlan.controller.ops.context import resolve_tenant

T = "/api/v1/tenants/{tenant}"
R = T + "/cvlans/{cvlan}/route-rules"


class RouteApproval(Body):
    routes: list[str] = Field(default_factory=list, max_length=32)
    """Advertised subnet routes (IPv4 CIDRs) of the node."""
    exit_node: bool = False
    """Also the node's exit-node offer."""


class RouteRuleNew(Body):
    kind: Literal["route", "exit"]
    """route: approve advertised routes within prefix; exit: approve exit-node offers."""
    prefix: str = Field(default="", max_length=43)
    tag: str = Field(default="", max_length=63)
    """Only nodes with this tag ("" = every node of the CVLAN)."""


@route(
    "GET",
    T + "/routes",
    summary="List advertised routes and exit nodes",
    tag="routes",
    query=("cvlan", "node"),
)
async def list_routes(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        items = await subnets.list_routes(c.ctx, s, c.who, t, c.q("cvlan"), c.q("node"))
    return {"items": items, "total": len(items)}


@route(
    "POST",
    T + "/nodes/{node}/routes/approve",
    summary="Approve routes of a node",
    tag="routes",
    body=RouteApproval,
)
async def approve_routes(c: Call) -> dict[str, Any]:
    return await _approval(c, True)


@route(
    "POST",
    T + "/nodes/{node}/routes/revoke",
    summary="Revoke route approvals",
    tag="routes",
    body=RouteApproval,
)
async def revoke_routes(c: Call) -> dict[str, Any]:
    return await _approval(c, False)


async def _approval(c: Call, approve: bool) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        b: RouteApproval = c.body
        changed = await subnets.set_approval(
            c.ctx, s, c.who, t, c.params["node"], b.routes, b.exit_node, approve
        )
        items = await subnets.list_routes(c.ctx, s, c.who, t, None, c.params["node"])
    return {"changed": changed, "items": items}


@route("GET", R, summary="List the auto-approval rules of a CVLAN", tag="routes")
async def list_route_rules(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        items = await subnets.list_rules(s, c.who, t, c.params["cvlan"])
    return {"items": items, "total": len(items)}


@route("POST", R, summary="Add an auto-approval rule", tag="routes", body=RouteRuleNew, status=201)
async def add_route_rule(c: Call) -> dict[str, Any]:
    b: RouteRuleNew = c.body
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        return await subnets.add_rule(c.ctx, s, c.who, t, c.params["cvlan"], (b.kind, b.prefix, b.tag))


@route("DELETE", R + "/{rule}", summary="Delete an auto-approval rule", tag="routes", status=204)
async def delete_route_rule(c: Call) -> None:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        await subnets.delete_rule(c.ctx, s, c.who, t, c.params["cvlan"], c.params["rule"])
