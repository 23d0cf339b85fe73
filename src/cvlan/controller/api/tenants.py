"""Management API: the caller (/api/v1/whoami) and tenants (/api/v1/tenants)."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.api.common import T, duration, tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Body, Call, Page, page, route
from cvlan.controller.ops import tenants
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import TenantShown, TenantView, WhoAmI


@route("GET", "/api/v1/whoami", summary="The caller and its roles", tag="auth")
async def whoami(c: Call) -> WhoAmI:
    return {
        "actor": c.who.actor,
        "platform_admin": c.who.platform_admin,
        "roles": {str(k): v.value for k, v in c.who.roles.items()},
    }


class TenantCreate(Body):
    name: str = Field(max_length=63)
    display_name: str = Field(default="", max_length=200)


class KeyExpiryPolicy(Body):
    node_cert_lifetime: str | None = Field(
        default=None, max_length=20, description="e.g. 7d, 30d; null: the controller's default"
    )


@route("POST", "/api/v1/tenants", summary="Create a tenant", tag="tenants", body=TenantCreate, status=201)
async def create_tenant(c: Call) -> TenantView:
    async with c.ctx.tx() as s:
        t = await tenants.create(c.ctx, s, c.who, c.body.name, c.body.display_name)
    return tenants.view(t)


@route("GET", "/api/v1/tenants", summary="List tenants visible to the caller", tag="tenants", paginated=True)
async def list_tenants(c: Call) -> Page[TenantView]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await tenants.list_(s, c.who, limit, offset)
    return page([tenants.view(t) for t in rows], total, limit, offset)


@tenant_route("GET", "", summary="Show a tenant", tag="tenants")
async def show_tenant(c: Call, s: Tx, t: Tenant) -> TenantShown:
    return {**tenants.view(t), **await tenants.counts(s, t.id)}


@route("DELETE", T, summary="Delete an empty tenant", tag="tenants", status=204)
async def delete_tenant(c: Call) -> None:
    async with c.ctx.tx() as s:
        await tenants.delete(c.ctx, s, c.who, c.params["tenant"])


@route(
    "PUT",
    T + "/key-expiry",
    summary="Set the tenant's key expiry policy: how long node certificates last (admin)",
    tag="tenants",
    body=KeyExpiryPolicy,
)
async def set_key_expiry_policy(c: Call) -> TenantView:
    lifetime = duration("node_cert_lifetime", c.body.node_cert_lifetime)
    seconds = int(lifetime.total_seconds()) if lifetime is not None else None
    async with c.ctx.tx() as s:
        t = await tenants.set_cert_lifetime(c.ctx, s, c.who, c.params["tenant"], seconds)
    return tenants.view(t)
