"""Tenant administration (users, API tokens, audit log) and the platform admin's pages."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

from aiohttp import web

from cvlan.common.durations import parse_duration
from cvlan.common.numbers import parse_uint
from cvlan.controller import audit
from cvlan.controller.auth import TENANT_ROLES, Level
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CA_PIN_KEY
from cvlan.controller.ops import infra, tenants, users
from cvlan.controller.web.core import ENGINE_POOL_KEY, HEALTH_KEY, PREFIX, Form, Page, page, see_other
from cvlan.wire.ids import TenantId

AUDIT_PAGE = 50
SINCE_CHOICES = (
    ("1h", "Last hour"),
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
)
ROLE_HELP = {
    "admin": "everything in the tenant, including users and API tokens",
    "operator": "CVLANs, nodes and enrollment tokens",
    "auditor": "read-only, including the audit log",
}


def _passthrough(e: DomainError) -> bool:
    """Errors that are about the caller or the URL, not the form: shown as an error page."""
    return e.kind == Kind.FORBIDDEN or (e.kind == Kind.NOT_FOUND and "tenant" in e.message)


# --- users --------------------------------------------------------------------------------


async def _users(
    p: Page, form: Form | None = None, status: int = 200, password: dict[str, str] | None = None
) -> web.Response:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        rows, total = await users.list_users(s, p.who, p.tenant, 1000, 0)
    return p.render(
        "users.html",
        status=status,
        members=rows,
        total=total,
        roles=[r.value for r in TENANT_ROLES],
        role_help=ROLE_HELP,
        form=form or Form({"role": "operator"}),
        password=password,
        nav="users",
    )


@page(tenant=True)
async def user_list(p: Page) -> web.StreamResponse:
    return await _users(p)


@page(tenant=True)
async def user_create(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    f = await p.form()
    try:
        async with p.ctx.tx() as s:
            u, shown = await users.create_user(
                p.ctx, s, p.who, p.tenant, f.get("email"), f.get("role"), f.get("password") or None
            )
    except DomainError as e:
        if _passthrough(e):
            raise
        f.fail(e, ("email", "role", "password"))
        return await _users(p, f, 422)
    if shown:
        return await _users(p, None, 201, {"email": u.email, "password": shown})
    return p.redirect(p.url("users"), f"{u.email} now has the {f.get('role')} role.")


@page(tenant=True)
async def user_remove(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["user"]
    async with p.ctx.tx() as s:
        await users.remove_user(p.ctx, s, p.who, p.tenant, ref)
    return p.redirect(p.url("users"), "User removed from this tenant.")


# --- API tokens ---------------------------------------------------------------------------


async def _apitokens(
    p: Page, form: Form | None = None, status: int = 200, created: dict[str, str] | None = None
) -> web.Response:
    assert p.tenant is not None
    if not p.can(Level.ADMIN):
        raise DomainError(Kind.FORBIDDEN, "API tokens: only a tenant admin may see them")
    async with p.ctx.tx() as s:
        rows, total = await users.list_api_tokens(s, p.who, p.tenant, 1000, 0)
    return p.render(
        "apitokens.html",
        status=status,
        tokens=list(reversed(rows)),
        total=total,
        roles=[r.value for r in TENANT_ROLES],
        form=form or Form({"role": "auditor"}),
        created=created,
        server=p.ctx.settings.url,
        nav="apitokens",
    )


@page(tenant=True)
async def apitoken_list(p: Page) -> web.StreamResponse:
    return await _apitokens(p)


@page(tenant=True)
async def apitoken_create(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    f = await p.form()
    try:
        expires: dt.timedelta | None = None
        if f.get("expires"):
            try:
                expires = parse_duration(f.get("expires"))
            except ValueError as e:
                raise DomainError(Kind.INVALID, str(e), {"field": "expires"}) from e
        async with p.ctx.tx() as s:
            tok, text = await users.create_api_token(
                p.ctx, s, p.who, p.tenant, f.get("role"), f.get("name"), expires
            )
    except DomainError as e:
        if _passthrough(e):
            raise
        f.fail(e, ("role", "name", "expires"))
        return await _apitokens(p, f, 422)
    return await _apitokens(p, None, 201, {"token": text, "prefix": tok.prefix, "role": tok.role})


@page(tenant=True)
async def apitoken_revoke(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        tok = await users.revoke_api_token(p.ctx, s, p.who, p.tenant, p.request.match_info["apitoken"])
    return p.redirect(p.url("apitokens"), f"API token {tok.prefix} revoked.")


# --- audit --------------------------------------------------------------------------------


MAX_AUDIT_PAGE = 1_000_000


def _audit_filters(p: Page) -> tuple[dict[str, str], dict[str, Any], int]:
    q = p.request.query
    f = {k: q.get(k, "").strip() for k in ("actor", "action", "since")}
    kw: dict[str, Any] = {"actor": f["actor"] or None, "action": f["action"] or None}
    if f["since"] in dict(SINCE_CHOICES):
        kw["since"] = p.ctx.now() - parse_duration(f["since"])
    else:
        f["since"] = ""
    pg = q.get("page", "1")
    return f, kw, max(1, parse_uint(pg, MAX_AUDIT_PAGE) or 1)


async def _audit_page(p: Page, tenant_ids: list[TenantId] | None, nav: str) -> web.Response:
    filters, kw, pg = _audit_filters(p)
    async with p.ctx.tx() as s:
        rows, total = await audit.query(s, tenant_ids, limit=AUDIT_PAGE, offset=(pg - 1) * AUDIT_PAGE, **kw)
        names = {t.id: t.name for t in (await tenants.list_(s, p.who, 1000, 0))[0]}
    pages = max(1, -(-total // AUDIT_PAGE))
    base = {k: v for k, v in filters.items() if v}

    def link(n: int) -> str:
        return "?" + urllib.parse.urlencode({**base, "page": n})

    return p.render(
        "audit.html",
        entries=rows,
        total=total,
        filters=filters,
        since_choices=SINCE_CHOICES,
        page_no=pg,
        pages=pages,
        prev_link=link(pg - 1) if pg > 1 else "",
        next_link=link(pg + 1) if pg < pages else "",
        tenant_names=names,
        nav=nav,
    )


@page(tenant=True)
async def tenant_audit(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    p.who.require(p.tenant.id, Level.READ, "read audit log")
    return await _audit_page(p, [p.tenant.id], "audit")


# --- platform -----------------------------------------------------------------------------


def _require_platform(p: Page) -> None:
    p.who.require_platform("platform pages")


@page()
async def platform_home(p: Page) -> web.StreamResponse:
    _require_platform(p)
    async with p.ctx.tx() as s:
        rows, total = await tenants.list_(s, p.who, 1000, 0)
        counts = {t.id: await tenants.counts(s, t.id) for t in rows}
    health = await p.request.app[HEALTH_KEY].report(p.ctx, p.request.app[ENGINE_POOL_KEY])
    return p.render(
        "platform.html",
        all_tenants=rows,
        counts=counts,
        total=total,
        health=health,
        form=Form(),
        nav="p-home",
    )


@page()
async def platform_health(p: Page) -> web.StreamResponse:
    _require_platform(p)
    return web.json_response(await p.request.app[HEALTH_KEY].report(p.ctx, p.request.app[ENGINE_POOL_KEY]))


@page()
async def tenant_create(p: Page) -> web.StreamResponse:
    _require_platform(p)
    f = await p.form()
    try:
        async with p.ctx.tx() as s:
            t = await tenants.create(p.ctx, s, p.who, f.get("name"), f.get("display_name"))
    except DomainError as e:
        if e.kind == Kind.FORBIDDEN:
            raise
        f.fail(e, ("name", "display_name"))
        async with p.ctx.tx() as s:
            rows, total = await tenants.list_(s, p.who, 1000, 0)
            counts = {t.id: await tenants.counts(s, t.id) for t in rows}
        health = await p.request.app[HEALTH_KEY].report(p.ctx, p.request.app[ENGINE_POOL_KEY])
        return p.render(
            "platform.html",
            422,
            all_tenants=rows,
            counts=counts,
            total=total,
            health=health,
            form=f,
            nav="p-home",
        )
    return p.redirect(PREFIX + "/platform/", f"Tenant {t.name} created.")


@page()
async def tenant_delete(p: Page) -> web.StreamResponse:
    ref = p.request.match_info["tenant"]
    async with p.ctx.tx() as s:
        await tenants.delete(p.ctx, s, p.who, ref)
    return p.redirect(PREFIX + "/platform/", f"Tenant {ref} deleted.")


async def _infra(
    p: Page, forms: dict[str, Form] | None = None, status: int = 200, created: dict[str, str] | None = None
) -> web.Response:
    _require_platform(p)
    async with p.ctx.tx() as s:
        regions, _ = await infra.list_regions(s, 1000, 0)
        relays, _ = await infra.list_relays(s, 1000, 0)
        vrouters, _ = await infra.list_vrouters(s, 1000, 0)
    forms = forms or {}
    return p.render(
        "infra.html",
        status=status,
        regions=regions,
        relays=relays,
        vrouters=vrouters,
        forms={k: forms.get(k, Form()) for k in ("region", "relay", "vrouter")},
        created=created,
        nav="p-infra",
    )


@page()
async def infra_page(p: Page) -> web.StreamResponse:
    return await _infra(p)


@page()
async def infra_create(p: Page) -> web.StreamResponse:
    """One handler for the three create forms; the form says which with 'kind'."""
    _require_platform(p)
    f = await p.form()
    kind = f.get("kind")
    pin, url = p.request.app[CA_PIN_KEY], p.ctx.settings.url
    try:
        async with p.ctx.tx() as s:
            if kind == "region":
                r = await infra.create_region(p.ctx, s, p.who, f.get("name"))
                return p.redirect(PREFIX + "/platform/infra", f"Region {r.name} created.")
            if kind == "relay":
                _, text = await infra.create_relay(
                    p.ctx, s, p.who, f.get("region"), f.get("name"), f.get("url"), f.get("stun")
                )
                cmd = infra.start_command("cvlan-relay", url, text, pin)
            elif kind == "vrouter":
                _, text = await infra.create_vrouter(
                    p.ctx, s, p.who, f.get("region"), f.get("name"), f.get("endpoint")
                )
                cmd = infra.start_command("cvlan-vrouter", url, text, pin)
            else:
                raise DomainError(Kind.INVALID, "unknown form")
    except DomainError as e:
        if e.kind == Kind.FORBIDDEN:
            raise
        f.fail(e, ("name", "region", "url", "stun", "endpoint"))
        return await _infra(p, {kind: f}, 422)
    name = f.get("name")
    return await _infra(p, None, 201, {"kind": kind, "name": name, "command": cmd})


@page()
async def infra_delete(p: Page) -> web.StreamResponse:
    _require_platform(p)
    kind, ref = p.request.match_info["kind"], p.request.match_info["ref"]
    deleters = {"region": infra.delete_region, "relay": infra.delete_relay, "vrouter": infra.delete_vrouter}
    if kind not in deleters:
        raise DomainError(Kind.NOT_FOUND, f"{kind} not found")
    try:
        async with p.ctx.tx() as s:
            await deleters[kind](p.ctx, s, p.who, ref)
    except DomainError as e:
        if e.kind != Kind.PRECONDITION:
            raise
        f = Form()
        f.fail(e, ())
        return await _infra(p, {"region": f}, 409)
    return p.redirect(PREFIX + "/platform/infra", f"{kind.capitalize()} deleted.")


@page()
async def platform_audit(p: Page) -> web.StreamResponse:
    _require_platform(p)
    return await _audit_page(p, None, "p-audit")


async def _to_platform(request: web.Request) -> web.StreamResponse:
    return see_other(PREFIX + "/platform/")


def routes(prefix: str) -> list[web.RouteDef]:
    t = prefix + "/t/{tenant}"
    pl = prefix + "/platform"
    return [
        web.get(t + "/users", user_list),
        web.post(t + "/users", user_create),
        web.post(t + "/users/{user}/remove", user_remove),
        web.get(t + "/apitokens", apitoken_list),
        web.post(t + "/apitokens", apitoken_create),
        web.post(t + "/apitokens/{apitoken}/revoke", apitoken_revoke),
        web.get(t + "/audit", tenant_audit),
        web.get(pl, _to_platform),
        web.get(pl + "/", platform_home),
        web.get(pl + "/health.json", platform_health),
        web.post(pl + "/tenants", tenant_create),
        web.post(pl + "/tenants/{tenant}/delete", tenant_delete),
        web.get(pl + "/infra", infra_page),
        web.post(pl + "/infra", infra_create),
        web.post(pl + "/infra/{kind}/{ref}/delete", infra_delete),
        web.get(pl + "/audit", platform_audit),
    ]
