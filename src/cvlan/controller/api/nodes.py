"""Management API: nodes (/api/v1/tenants/{tenant}/nodes, /api/v1/nodes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import Field

from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import Body, Call, Page, page, route
from cvlan.controller.ops import cvlans, dns, nodes
from cvlan.controller.ops.context import Tx


class NodeUpdate(Body):
    name: str | None = Field(default=None, max_length=63)
    cvlan: str | None = Field(default=None, max_length=63)


class NodeKeyExpiry(Body):
    disabled: bool


class NodeTags(Body):
    tags: list[str] = Field(max_length=cvlans.MAX_TAGS)


async def _shown(c: Call, s: Tx, t: Tenant, n: Node) -> dict[str, Any]:
    """The node as the API shows it after a change."""
    n, cn = await nodes.get(s, c.who, t, str(n.id))
    return nodes.view(n, c.ctx, cn)


@tenant_route(
    "GET", "/nodes", summary="List nodes with status", tag="nodes", query=("cvlan",), paginated=True
)
async def list_nodes(c: Call, s: Tx, t: Tenant) -> Page[dict[str, Any]]:
    limit, offset = c.page
    rows, total = await nodes.list_(s, c.who, t, c.q("cvlan"), limit, offset)
    return page([nodes.view(n, c.ctx, cn) for n, cn in rows], total, limit, offset)


@route(
    "GET",
    "/api/v1/nodes",
    summary="List nodes of every tenant visible to the caller",
    tag="nodes",
    paginated=True,
)
async def list_all_nodes(c: Call) -> Page[dict[str, Any]]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await nodes.list_visible(s, c.who, limit, offset)
    return page([nodes.view(n, c.ctx, cn) for n, cn in rows], total, limit, offset)


@tenant_route("GET", "/nodes/{node}", summary="Show a node", tag="nodes")
async def show_node(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
    n, cn = await nodes.get(s, c.who, t, c.params["node"])
    return {**nodes.view(n, c.ctx, cn), "dns_name": await dns.node_dns_name(c.ctx, s, t, n, cn)}


@tenant_route(
    "PATCH",
    "/nodes/{node}",
    summary="Rename a node or move it to another CVLAN",
    tag="nodes",
    body=NodeUpdate,
)
async def update_node(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
    if c.body.name is None and c.body.cvlan is None:
        raise DomainError(Kind.INVALID, "nothing to change: give name or cvlan")
    ref = c.params["node"]
    if c.body.name is not None:
        ref = str((await nodes.rename(c.ctx, s, c.who, t, ref, c.body.name)).id)
    if c.body.cvlan is not None:
        await nodes.move(c.ctx, s, c.who, t, ref, c.body.cvlan)
    n, cn = await nodes.get(s, c.who, t, ref)
    return nodes.view(n, c.ctx, cn)


@tenant_route(
    "DELETE", "/nodes/{node}", summary="Delete a node and revoke its certificate", tag="nodes", status=204
)
async def delete_node(c: Call, s: Tx, t: Tenant) -> None:
    await nodes.delete(c.ctx, s, c.who, t, c.params["node"])


NodeChange = Callable[[Call, Tx, Tenant], Awaitable[Node]]
"""A change of one node (ops.nodes), from the call's path and body."""


def _node_change(method: str, sub: str, name: str, summary: str, change: NodeChange, **kw: Any) -> None:
    """Declare /nodes/{node}<sub>: apply the change, answer with the node as it is now."""

    async def handler(c: Call, s: Tx, t: Tenant) -> dict[str, Any]:
        return await _shown(c, s, t, await change(c, s, t))

    handler.__name__ = name  # the route's name and the OpenAPI operationId
    tenant_route(method, "/nodes/{node}" + sub, summary=summary, tag="nodes", **kw)(handler)


def _disabling(disabled: bool) -> NodeChange:
    async def change(c: Call, s: Tx, t: Tenant) -> Node:
        return await nodes.set_disabled(c.ctx, s, c.who, t, c.params["node"], disabled)

    return change


_node_change(
    "POST",
    "/disable",
    "disable_node",
    "Disable a node: refused from its next request, dropped from its peers' maps at once",
    _disabling(True),
)
_node_change(
    "POST",
    "/enable",
    "enable_node",
    "Enable a disabled node again, with the same id, address and name",
    _disabling(False),
)
_node_change(
    "PUT",
    "/key-expiry",
    "set_node_key_expiry",
    "Disable key expiry for a node (servers) or enable it again (admin)",
    lambda c, s, t: nodes.set_key_expiry(c.ctx, s, c.who, t, c.params["node"], c.body.disabled),
    body=NodeKeyExpiry,
)
_node_change(
    "PUT",
    "/tags",
    "set_node_tags",
    "Replace a node's tags (admin); the CVLAN's policy follows at once",
    lambda c, s, t: nodes.set_tags(c.ctx, s, c.who, t, c.params["node"], c.body.tags),
    body=NodeTags,
)
