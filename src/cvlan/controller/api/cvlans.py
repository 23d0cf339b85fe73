"""Management API: CVLANs (/api/v1/tenants/{tenant}/cvlans)."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Body, Call, Page, page
from cvlan.controller.ops import cvlans
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import CvlanView


class CvlanCreate(Body):
    name: str = Field(max_length=63)
    subnet: str | None = Field(default=None, max_length=43)
    mode: str = "mesh"


class CvlanUpdate(Body):
    name: str | None = Field(default=None, max_length=63)
    mode: str | None = None


@tenant_route("POST", "/cvlans", summary="Create a CVLAN", tag="cvlans", body=CvlanCreate, status=201)
async def create_cvlan(c: Call, s: Tx, t: Tenant) -> CvlanView:
    cv = await cvlans.create(c.ctx, s, c.who, t, c.body.name, c.body.subnet, c.body.mode)
    return cvlans.view(cv, 0)


@tenant_route("GET", "/cvlans", summary="List CVLANs", tag="cvlans", paginated=True)
async def list_cvlans(c: Call, s: Tx, t: Tenant) -> Page[CvlanView]:
    limit, offset = c.page
    rows, total = await cvlans.list_(s, c.who, t, limit, offset)
    return page([cvlans.view(cv, n) for cv, n in rows], total, limit, offset)


@tenant_route("GET", "/cvlans/{cvlan}", summary="Show a CVLAN", tag="cvlans")
async def show_cvlan(c: Call, s: Tx, t: Tenant) -> CvlanView:
    return cvlans.view(await cvlans.get(s, c.who, t, c.params["cvlan"]))


@tenant_route(
    "PATCH", "/cvlans/{cvlan}", summary="Rename a CVLAN or change its mode", tag="cvlans", body=CvlanUpdate
)
async def update_cvlan(c: Call, s: Tx, t: Tenant) -> CvlanView:
    cv = await cvlans.update(c.ctx, s, c.who, t, c.params["cvlan"], c.body.name, c.body.mode)
    return cvlans.view(cv)


@tenant_route("DELETE", "/cvlans/{cvlan}", summary="Delete an empty CVLAN", tag="cvlans", status=204)
async def delete_cvlan(c: Call, s: Tx, t: Tenant) -> None:
    await cvlans.delete(c.ctx, s, c.who, t, c.params["cvlan"])
