"""Management API: relays (/api/v1/relays)."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.api.common import daemon_created, daemon_page
from cvlan.controller.http.framework import Body, Call, Page, route
from cvlan.controller.ops import infra
from cvlan.controller.ops.views import RelayCreated, RelayView


class RelayCreate(Body):
    name: str = Field(max_length=63)
    region: str = Field(max_length=63)
    url: str = Field(max_length=300)
    stun: str = Field(default="", max_length=300)


@route(
    "POST",
    "/api/v1/relays",
    summary="Register a relay (returns its start command)",
    tag="infra",
    body=RelayCreate,
    status=201,
)
async def create_relay(c: Call) -> RelayCreated:
    b: RelayCreate = c.body
    async with c.ctx.tx() as s:
        x, text = await infra.create_relay(c.ctx, s, c.who, b.region, b.name, b.url, b.stun)
    return {**infra.relay_view(x, b.region), **daemon_created(c, "cvlan-relay", text)}


@route("GET", "/api/v1/relays", summary="List relays", tag="infra", paginated=True)
async def list_relays(c: Call) -> Page[RelayView]:
    return await daemon_page(c, infra.list_relays, infra.relay_view)


@route("DELETE", "/api/v1/relays/{relay}", summary="Delete a relay", tag="infra", status=204)
async def delete_relay(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_relay(c.ctx, s, c.who, c.params["relay"])
