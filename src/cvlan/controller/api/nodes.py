"""Management API: nodes (/api/v1/tenants/{tenant}/nodes, /api/v1/nodes)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import Body, Call, page, route
from cvlan.controller.ops import cvlans, dns, nodes


class NodeUpdate(Body):
    name: str | None = Field(default=None, max_length=63)
    cvlan: str | None = Field(default=None, max_length=63)


class NodeKeyExpiry(Body):
    disabled: bool


class NodeTags(Body):
    tags: list[str] = Field(max_length=cvlans.MAX_TAGS)


async def _shown(c: Call, s: AsyncSession, t: Tenant, n: Node) -> dict[str, Any]:
    """The node as the API shows it after a change."""
    n, cn = await nodes.get(s, c.who, t, str(n.id))
    return nodes.view(n, c.ctx, cn)


@tenant_route(
    "GET", "/nodes", summary="List nodes with status", tag="nodes", query=("cvlan",), paginated=True
)
async def list_nodes(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
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
async def list_all_nodes(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await nodes.list_visible(s, c.who, limit, offset)
    return page([nodes.view(n, c.ctx, cn) for n, cn in rows], total, limit, offset)


@tenant_route("GET", "/nodes/{node}", summary="Show a node", tag="nodes")
async def show_node(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
    n, cn = await nodes.get(s, c.who, t, c.params["node"])
    return {**nodes.view(n, c.ctx, cn), "dns_name": await dns.node_dns_name(c.ctx, s, t, n, cn)}


@tenant_route(
    "PATCH",
    "/nodes/{node}",
    summary="Rename a node or move it to another CVLAN",
    tag="nodes",
    body=NodeUpdate,
)
async def update_node(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
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
async def delete_node(c: Call, s: AsyncSession, t: Tenant) -> None:
    await nodes.delete(c.ctx, s, c.who, t, c.params["node"])


@tenant_route(
    "POST",
    "/nodes/{node}/disable",
    summary="Disable a node: refused from its next request, dropped from its peers' maps at once",
    tag="nodes",
)
async def disable_node(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
    return await _shown(c, s, t, await nodes.set_disabled(c.ctx, s, c.who, t, c.params["node"], True))


@tenant_route(
    "POST",
    "/nodes/{node}/enable",
    summary="Enable a disabled node again, with the same id, address and name",
    tag="nodes",
)
async def enable_node(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
    return await _shown(c, s, t, await nodes.set_disabled(c.ctx, s, c.who, t, c.params["node"], False))


@tenant_route(
    "PUT",
    "/nodes/{node}/key-expiry",
    summary="Disable key expiry for a node (servers) or enable it again (admin)",
    tag="nodes",
    body=NodeKeyExpiry,
)
async def set_node_key_expiry(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
    n = await nodes.set_key_expiry(c.ctx, s, c.who, t, c.params["node"], c.body.disabled)
    return await _shown(c, s, t, n)


@tenant_route(
    "PUT",
    "/nodes/{node}/tags",
    summary="Replace a node's tags (admin); the CVLAN's policy follows at once",
    tag="nodes",
    body=NodeTags,
)
async def set_node_tags(c: Call, s: AsyncSession, t: Tenant) -> dict[str, Any]:
    return await _shown(c, s, t, await nodes.set_tags(c.ctx, s, c.who, t, c.params["node"], c.body.tags))
