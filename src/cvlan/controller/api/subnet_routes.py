"""Management API of subnet routes and exit nodes (see docs/ROUTES.md, docs/EXIT-NODES.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Body, Call
from cvlan.controller.ops import subnets
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import Items, RouteApprovalSet, RouteRuleAdded, RouteRuleView, RouteView

RULES = "/cvlans/{cvlan}/route-rules"


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


@tenant_route(
    "GET", "/routes", summary="List advertised routes and exit nodes", tag="routes", query=("cvlan", "node")
)
async def list_routes(c: Call, s: Tx, t: Tenant) -> Items[RouteView]:
    items = await subnets.list_routes(c.ctx, s, c.who, t, c.q("cvlan"), c.q("node"))
    return {"items": items, "total": len(items)}


@tenant_route(
    "POST",
    "/nodes/{node}/routes/approve",
    summary="Approve routes of a node",
    tag="routes",
    body=RouteApproval,
)
async def approve_routes(c: Call, s: Tx, t: Tenant) -> RouteApprovalSet:
    return await _approval(c, s, t, True)


@tenant_route(
    "POST", "/nodes/{node}/routes/revoke", summary="Revoke route approvals", tag="routes", body=RouteApproval
)
async def revoke_routes(c: Call, s: Tx, t: Tenant) -> RouteApprovalSet:
    return await _approval(c, s, t, False)


async def _approval(c: Call, s: Tx, t: Tenant, approve: bool) -> RouteApprovalSet:
    b: RouteApproval = c.body
    changed = await subnets.set_approval(c.ctx, s, c.who, t, c.params["node"], b.routes, b.exit_node, approve)
    items = await subnets.list_routes(c.ctx, s, c.who, t, None, c.params["node"])
    return {"changed": changed, "items": items}


@tenant_route("GET", RULES, summary="List the auto-approval rules of a CVLAN", tag="routes")
async def list_route_rules(c: Call, s: Tx, t: Tenant) -> Items[RouteRuleView]:
    items = await subnets.list_rules(s, c.who, t, c.params["cvlan"])
    return {"items": items, "total": len(items)}


@tenant_route("POST", RULES, summary="Add an auto-approval rule", tag="routes", body=RouteRuleNew, status=201)
async def add_route_rule(c: Call, s: Tx, t: Tenant) -> RouteRuleAdded:
    b: RouteRuleNew = c.body
    return await subnets.add_rule(c.ctx, s, c.who, t, c.params["cvlan"], (b.kind, b.prefix, b.tag))


@tenant_route("DELETE", RULES + "/{rule}", summary="Delete an auto-approval rule", tag="routes", status=204)
async def delete_route_rule(c: Call, s: Tx, t: Tenant) -> None:
    await subnets.delete_rule(c.ctx, s, c.who, t, c.params["cvlan"], c.params["rule"])
