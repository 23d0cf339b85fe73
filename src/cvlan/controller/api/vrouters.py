"""Management API: vrouters (/api/v1/vrouters) and the vrouters serving a tenant's CVLANs
(/api/v1/tenants/{tenant}/cvlans/{cvlan}/vrouters; see docs/VROUTER.md)."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.api.common import daemon_created, daemon_page, tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Body, Call, Page, route
from cvlan.controller.ops import infra, vrouters
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import AttachmentSet, AttachmentView, Items, VrouterCreated, VrouterView

ATTACHED = "/cvlans/{cvlan}/vrouters"


class VrouterCreate(Body):
    name: str = Field(max_length=63)
    region: str = Field(max_length=63)
    endpoint: str = Field(max_length=300)


class VrouterAttach(Body):
    vrouter: str = Field(min_length=1, max_length=63)
    """Name or id of a registered vrouter (cvlan vrouter list)."""


@route(
    "POST",
    "/api/v1/vrouters",
    summary="Register a vrouter (returns its start command)",
    tag="infra",
    body=VrouterCreate,
    status=201,
)
async def create_vrouter(c: Call) -> VrouterCreated:
    b: VrouterCreate = c.body
    async with c.ctx.tx() as s:
        x, text = await infra.create_vrouter(c.ctx, s, c.who, b.region, b.name, b.endpoint)
    return {**infra.vrouter_view(x, b.region), **daemon_created(c, "cvlan-vrouter", text)}


@route("GET", "/api/v1/vrouters", summary="List vrouters", tag="infra", paginated=True)
async def list_vrouters(c: Call) -> Page[VrouterView]:
    return await daemon_page(c, infra.list_vrouters, infra.vrouter_view)


@route("DELETE", "/api/v1/vrouters/{vrouter}", summary="Delete a vrouter", tag="infra", status=204)
async def delete_vrouter(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_vrouter(c.ctx, s, c.who, c.params["vrouter"])


@tenant_route("GET", ATTACHED, summary="List the vrouters serving a CVLAN", tag="vrouters")
async def list_cvlan_vrouters(c: Call, s: Tx, t: Tenant) -> Items[AttachmentView]:
    items = await vrouters.list_for_cvlan(s, c.who, t, c.params["cvlan"])
    return {"items": items, "total": len(items)}


@tenant_route(
    "POST", ATTACHED, summary="Attach a vrouter to a CVLAN", tag="vrouters", body=VrouterAttach, status=201
)
async def attach_vrouter(c: Call, s: Tx, t: Tenant) -> AttachmentSet:
    view, changed = await vrouters.attach(c.ctx, s, c.who, t, c.params["cvlan"], c.body.vrouter)
    return {**view, "changed": changed}


@tenant_route(
    "DELETE", ATTACHED + "/{vrouter}", summary="Detach a vrouter from a CVLAN", tag="vrouters", status=204
)
async def detach_vrouter(c: Call, s: Tx, t: Tenant) -> None:
    await vrouters.detach(c.ctx, s, c.who, t, c.params["cvlan"], c.params["vrouter"])
