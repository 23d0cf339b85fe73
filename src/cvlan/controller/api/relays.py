"""Management API: relays (/api/v1/relays)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cvlan.controller.http.framework import CA_PIN_KEY, Body, Call, page, route
from cvlan.controller.ops import infra


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
async def create_relay(c: Call) -> dict[str, Any]:
    b: RelayCreate = c.body
    async with c.ctx.tx() as s:
        x, text = await infra.create_relay(c.ctx, s, c.who, b.region, b.name, b.url, b.stun)
    cmd = infra.start_command("cvlan-relay", c.ctx.settings.url, text, c.request.app[CA_PIN_KEY])
    return {**infra.relay_view(x, b.region), "token": text, "command": cmd}


@route("GET", "/api/v1/relays", summary="List relays", tag="infra", paginated=True)
async def list_relays(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await infra.list_relays(s, limit, offset)
    return page([infra.relay_view(x, n) for x, n in rows], total, limit, offset)


@route("DELETE", "/api/v1/relays/{relay}", summary="Delete a relay", tag="infra", status=204)
async def delete_relay(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_relay(c.ctx, s, c.who, c.params["relay"])
