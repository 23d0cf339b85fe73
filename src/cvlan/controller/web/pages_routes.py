"""A node's subnet routes and exit-node offer on its page: approve and revoke (tenant admins;
docs/ROUTES.md, docs/EXIT-NODES.md). The table itself is drawn by the node page (pages_tenant)."""

from __future__ import annotations

from aiohttp import web

from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import subnets
from cvlan.controller.web import pages_tenant
from cvlan.controller.web.core import Page, page
from cvlan.wire.routes import EXIT_ROUTE


@page(tenant=True)
async def route_approve(p: Page) -> web.StreamResponse:
    return await _set(p, True)


@page(tenant=True)
async def route_revoke(p: Page) -> web.StreamResponse:
    return await _set(p, False)


async def _set(p: Page, approve: bool) -> web.StreamResponse:
    """One route (or the exit offer, route 0.0.0.0/0) of the node in the URL; a refusal is shown on
    the node page and changes nothing."""
    assert p.tenant is not None
    ref = p.request.match_info["node"]
    f = await p.form()
    prefix = f.get("route")
    is_exit = prefix == EXIT_ROUTE
    routes = [] if is_exit else [prefix]
    try:
        async with p.ctx.tx() as s:
            changed = await subnets.set_approval(p.ctx, s, p.who, p.tenant, ref, routes, is_exit, approve)
    except DomainError as e:
        if e.kind == Kind.FORBIDDEN:
            raise
        f.fail(e, ("route",), {"routes": "route"})
        return await pages_tenant.render_node(p, ref, f, 409 if e.kind == Kind.CONFLICT else 422)
    what = "The exit node offer" if is_exit else f"Route {prefix}"
    done = "approved; peers get it with their next map" if approve else "revoked; peers drop it at once"
    msg = f"{what} {done}." if changed else f"{what} was already {'approved' if approve else 'not approved'}."
    return p.redirect(p.url(f"nodes/{ref}"), msg)


def routes(prefix: str) -> list[web.RouteDef]:
    n = prefix + "/t/{tenant}/nodes/{node}/routes"
    return [web.post(n + "/approve", route_approve), web.post(n + "/revoke", route_revoke)]
