"""Management API: regions (/api/v1/regions), where relays and vrouters stand."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.http.framework import Body, Call, Page, page, route
from cvlan.controller.ops import infra
from cvlan.controller.ops.views import RegionView


class RegionCreate(Body):
    name: str = Field(max_length=63)


@route("POST", "/api/v1/regions", summary="Create a region", tag="infra", body=RegionCreate, status=201)
async def create_region(c: Call) -> RegionView:
    async with c.ctx.tx() as s:
        return infra.region_view(await infra.create_region(c.ctx, s, c.who, c.body.name))


@route("GET", "/api/v1/regions", summary="List regions", tag="infra", paginated=True)
async def list_regions(c: Call) -> Page[RegionView]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await infra.list_regions(s, limit, offset)
    return page([infra.region_view(r) for r in rows], total, limit, offset)


@route("DELETE", "/api/v1/regions/{region}", summary="Delete an unused region", tag="infra", status=204)
async def delete_region(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_region(c.ctx, s, c.who, c.params["region"])
