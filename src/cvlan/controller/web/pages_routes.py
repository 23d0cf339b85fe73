"""Subnet routes and exit nodes in the UI (docs/ROUTES.md, docs/EXIT-NODES.md): approve and revoke a
node's routes and exit offer on its page, add and delete a CVLAN's auto-approval rules on the CVLAN
page (tenant admins). The tables themselves are drawn by those pages (pages_tenant)."""

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


RULE_FIELDS = ("kind", "prefix", "tag")


@page(tenant=True)
async def rule_add(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    f = await p.form()
    rule = (f.get("kind"), f.get("prefix").strip(), f.get("tag").strip())
    try:
        async with p.ctx.tx() as s:
            added = await subnets.add_rule(p.ctx, s, p.who, p.tenant, ref, rule)
    except DomainError as e:
        if e.kind in (Kind.FORBIDDEN, Kind.NOT_FOUND):
            raise
        f.fail(e, RULE_FIELDS, {"rule": "prefix", "route": "prefix", "an": "prefix", "a": "prefix"})
        return await pages_tenant.render_cvlan(p, ref, status=422, rule_form=f)
    n = len(added["approved"])
    return p.redirect(p.url(f"cvlans/{ref}"), f"Rule added; it approved {n} pending route{'s' * (n != 1)}.")


@page(tenant=True)
async def rule_delete(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    await p.form()  # checks the CSRF token
    async with p.ctx.tx() as s:
        await subnets.delete_rule(p.ctx, s, p.who, p.tenant, ref, p.request.match_info["rule"])
    return p.redirect(p.url(f"cvlans/{ref}"), "Rule deleted; what it approved stays approved.")


def routes(prefix: str) -> list[web.RouteDef]:
    n = prefix + "/t/{tenant}/nodes/{node}/routes"
    c = prefix + "/t/{tenant}/cvlans/{cvlan}/route-rules"
    return [
        web.post(n + "/approve", route_approve),
        web.post(n + "/revoke", route_revoke),
        web.post(c, rule_add),
        web.post(c + "/{rule}/delete", rule_delete),
    ]
