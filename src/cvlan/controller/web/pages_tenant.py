"""Tenant pages: dashboard, CVLANs and their members, nodes, enrollment tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from cvlan.common.durations import parse_duration
from cvlan.common.numbers import parse_uint
from cvlan.controller import audit
from cvlan.controller.auth import Level
from cvlan.controller.db.models import EnrollmentToken, Node
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CA_PIN_KEY
from cvlan.controller.ops import cvlans, dns, infra, nodes, reauth, subnets, tenants, vrouters
from cvlan.controller.ops.context import Tx
from cvlan.controller.web.core import Form, Page, page

LIST_LIMIT = 1000
EXPIRY_CHOICES = ("1h", "24h", "7d", "30d", "90d")


def node_row(p: Page, n: Node, cvlan_name: str) -> dict[str, Any]:
    """What the members tables show of a node (the same fields the live script refreshes)."""
    v = nodes.view(n, p.ctx, cvlan_name)
    # An offline node's last report says nothing about its paths now.
    v["path"] = node_path(n.health or {}) if v["online"] else ""
    return v


def node_path(health: dict[str, Any]) -> str:
    """How the node reaches its peers, from its last health report: '2 direct · 1 relay',
    'no peers', or '' before the first report."""
    total = health.get("peers_total")
    if not isinstance(total, int):
        return ""
    if total == 0:
        return "no peers"
    direct, relay = int(health.get("peers_direct") or 0), int(health.get("peers_relay") or 0)
    parts = [f"{direct} direct"] if direct else []
    parts += [f"{relay} relay"] if relay else []
    waiting = total - direct - relay
    parts += [f"{waiting} connecting"] if waiting > 0 else []
    return " · ".join(parts)


def token_status(t: EnrollmentToken, now: dt.datetime) -> str:
    if t.revoked_at is not None:
        return "revoked"
    if t.expires_at is not None and t.expires_at <= now:
        return "expired"
    if t.max_uses is not None and t.uses >= t.max_uses:
        return "used up"
    return "active"


@page(tenant=True)
async def dashboard(p: Page) -> web.StreamResponse:
    return await _dashboard(p)


async def _dashboard(p: Page, form: Form | None = None, status: int = 200) -> web.Response:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        cv_rows, cv_total = await cvlans.list_(s, p.who, p.tenant, LIST_LIMIT, 0)
        node_rows, node_total = await nodes.list_(s, p.who, p.tenant, None, LIST_LIMIT, 0)
        p.who.require(p.tenant.id, Level.READ, "read audit log")
        events, _ = await audit.query(s, [p.tenant.id], limit=8)
    online = sum(1 for n, _ in node_rows if nodes.is_online(n, p.ctx.now(), p.ctx.settings.offline_after_s))
    return p.render(
        "dashboard.html",
        counts={"cvlans": cv_total, "nodes": node_total, "online": online},
        cvlans=cv_rows,
        events=events,
        nav="dashboard",
        status=status,
        form=form or Form({"lifetime": _lifetime_text(p.tenant.node_cert_lifetime_s)}),
        default_lifetime=_lifetime_text(p.ctx.settings.node_cert_lifetime_s),
    )


def _lifetime_text(seconds: int | None) -> str:
    if seconds is None:
        return ""
    return (
        f"{seconds // 86400}d"
        if seconds % 86400 == 0
        else f"{seconds // 3600}h"
        if seconds % 3600 == 0
        else f"{seconds}s"
    )


@page(tenant=True)
async def tenant_key_expiry(p: Page) -> web.StreamResponse:
    """The tenant's key expiry policy: a lifetime such as 30d, or empty for the controller's default."""
    assert p.tenant is not None
    f = await p.form()
    text = f.get("lifetime").strip()
    try:
        try:
            seconds = int(parse_duration(text).total_seconds()) if text else None
        except ValueError as e:
            raise DomainError(Kind.INVALID, str(e), {"field": "node_cert_lifetime"}) from e
        async with p.ctx.tx() as s:
            await tenants.set_cert_lifetime(p.ctx, s, p.who, str(p.tenant.id), seconds)
    except DomainError as e:
        if e.kind != Kind.INVALID:
            raise
        f.fail(e, ("lifetime",), {"node_cert_lifetime": "lifetime"})
        return await _dashboard(p, f, 422)
    return p.redirect(p.url(""), "Key expiry policy saved; it applies from each node's next certificate.")


async def _cvlan_list(p: Page, form: Form | None = None, status: int = 200) -> web.Response:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        rows, total = await cvlans.list_(s, p.who, p.tenant, LIST_LIMIT, 0)
    return p.render(
        "cvlans.html",
        status=status,
        cvlans=rows,
        total=total,
        form=form or Form({"mode": "mesh"}),
        nav="cvlans",
    )


@page(tenant=True)
async def cvlan_list(p: Page) -> web.StreamResponse:
    return await _cvlan_list(p)


@page(tenant=True)
async def cvlan_create(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    tenant, f = p.tenant, await p.form()

    async def create(s: Tx) -> tuple[str, str]:
        subnet, mode = f.get("subnet") or None, f.get("mode", "mesh")
        c = await cvlans.create(p.ctx, s, p.who, tenant, f.get("name"), subnet, mode)
        return p.url(f"cvlans/{c.name}"), f"CVLAN {c.name} created with subnet {c.subnet}."

    return await p.submit(f, create, lambda form: _cvlan_list(p, form, 422), ("name", "subnet", "mode"))


async def render_cvlan(
    p: Page, ref: str, form: Form | None = None, status: int = 200, rule_form: Form | None = None
) -> web.Response:
    """The CVLAN page (form: the settings or vrouter form submitted; rule_form: the route rule one)."""
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        c = await cvlans.get(s, p.who, p.tenant, ref)
        rows, _ = await nodes.list_(s, p.who, p.tenant, str(c.id), LIST_LIMIT, 0)
        toks, _ = await cvlans.list_tokens(s, p.who, p.tenant, str(c.id), LIST_LIMIT, 0)
        attached = await vrouters.list_for_cvlan(s, p.who, p.tenant, str(c.id))
        all_vrouters, _ = await infra.list_vrouters(s, LIST_LIMIT, 0)
        rules = await subnets.list_rules(s, p.who, p.tenant, str(c.id))
    active = [t for t, _ in toks if token_status(t, p.ctx.now()) == "active"]
    names = {a["vrouter"] for a in attached}
    return p.render(
        "cvlan.html",
        status=status,
        cvlan=c,
        members=[node_row(p, n, cn) for n, cn in rows],
        active_tokens=len(active),
        attached=attached,
        vrouter_choices=[
            (v.name, f"{v.name} ({region})") for v, region in all_vrouters if v.name not in names
        ],
        form=form or Form({"name": c.name, "mode": c.mode}),
        route_rules=rules,
        rule_form=rule_form or Form({"kind": "route"}),
        nav="cvlans",
    )


@page(tenant=True)
async def cvlan_detail(p: Page) -> web.StreamResponse:
    return await render_cvlan(p, p.request.match_info["cvlan"])


@page(tenant=True)
async def cvlan_edit(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    tenant, ref, f = p.tenant, p.request.match_info["cvlan"], await p.form()

    async def update(s: Tx) -> tuple[str, str]:
        c = await cvlans.update(p.ctx, s, p.who, tenant, ref, f.get("name"), f.get("mode"))
        return p.url(f"cvlans/{c.name}"), f"CVLAN {c.name} saved."

    return await p.submit(f, update, lambda form: render_cvlan(p, ref, form, 422), ("name", "mode"))


@page(tenant=True)
async def cvlan_delete(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    try:
        async with p.ctx.tx() as s:
            await cvlans.delete(p.ctx, s, p.who, p.tenant, ref)
    except DomainError as e:
        if e.kind != Kind.PRECONDITION:
            raise
        f = Form()
        f.fail(e, ())
        return await render_cvlan(p, ref, f, 409)
    return p.redirect(p.url("cvlans"), f"CVLAN {ref} deleted.")


@page(tenant=True)
async def cvlan_vrouters(p: Page) -> web.StreamResponse:
    """Attach (field vrouter) or detach (field detach) a vrouter serving the CVLAN."""
    assert p.tenant is not None
    tenant, ref, f = p.tenant, p.request.match_info["cvlan"], await p.form()

    async def change(s: Tx) -> tuple[str, str]:
        if f.get("detach"):
            await vrouters.detach(p.ctx, s, p.who, tenant, ref, f.get("detach"))
            return p.url(f"cvlans/{ref}"), f"VRouter {f.get('detach')} no longer serves this CVLAN."
        if not f.get("vrouter"):
            raise DomainError(Kind.INVALID, "choose a vrouter", {"field": "vrouter"})
        await vrouters.attach(p.ctx, s, p.who, tenant, ref, f.get("vrouter"))
        return p.url(f"cvlans/{ref}"), f"VRouter {f.get('vrouter')} now serves this CVLAN."

    def passes(e: DomainError) -> bool:  # an unknown vrouter is the form's error, a gone CVLAN is not
        return e.kind == Kind.FORBIDDEN or (e.kind == Kind.NOT_FOUND and "CVLAN" in e.message)

    return await p.submit(
        f, change, lambda form: render_cvlan(p, ref, form, 422), ("vrouter",), passes=passes
    )


@page(tenant=True)
async def node_list(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        rows, total = await nodes.list_(s, p.who, p.tenant, None, LIST_LIMIT, 0)
        asking = await reauth.list_requests(s, p.who, p.tenant)
    return p.render(
        "nodes.html",
        members=[node_row(p, n, cn) for n, cn in rows],
        total=total,
        reauth_requests=[reauth.request_view(r, n) for r, n in asking if r.state == reauth.PENDING],
        nav="nodes",
    )


@page(tenant=True)
async def node_reauth(p: Page) -> web.StreamResponse:
    """Approve or reject a node's pending re-authentication request (admin)."""
    assert p.tenant is not None
    approve = p.request.match_info["decision"] == "approve"
    async with p.ctx.tx() as s:
        _, n = await reauth.decide(p.ctx, s, p.who, p.tenant, p.request.match_info["node"], approve)
    if approve:
        msg = f"Re-authentication of {n.name} approved; it comes back with its address {n.address}."
    else:
        msg = f"Re-authentication of {n.name} rejected; it is refused unless it brings a new token."
    return p.redirect(p.url("nodes"), msg)


async def render_node(p: Page, ref: str, form: Form | None = None, status: int = 200) -> web.Response:
    """The node page (form: what was submitted, with its errors)."""
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        n, cn = await nodes.get(s, p.who, p.tenant, ref)
        all_cvlans, _ = await cvlans.list_(s, p.who, p.tenant, LIST_LIMIT, 0)
        dns_name = await dns.node_dns_name(p.ctx, s, p.tenant, n, cn)
        node_routes = await subnets.list_routes(p.ctx, s, p.who, p.tenant, None, str(n.id))
        asking = await reauth.pending_for(s, p.who, p.tenant, n)
    return p.render(
        "node.html",
        reauth_request=asking,
        status=status,
        node=node_row(p, n, cn),
        dns_name=dns_name,
        node_routes=node_routes,
        os_info=n.os_info,
        cvlans=[c for c, _ in all_cvlans],
        form=form or Form({"name": n.name, "cvlan": cn, "tags": " ".join(n.tags or [])}),
        nav="nodes",
    )


@page(tenant=True)
async def node_detail(p: Page) -> web.StreamResponse:
    return await render_node(p, p.request.match_info["node"])


@page(tenant=True)
async def node_update(p: Page) -> web.StreamResponse:
    """Rename (field name) or move (field cvlan), whichever the form carries."""
    assert p.tenant is not None
    ref = p.request.match_info["node"]
    f = await p.form()
    try:
        async with p.ctx.tx() as s:
            if "name" in f.values:
                n = await nodes.rename(p.ctx, s, p.who, p.tenant, ref, f.get("name"))
                msg = f"Node renamed to {n.name}."
            else:
                n = await nodes.move(p.ctx, s, p.who, p.tenant, ref, f.get("cvlan"))
                msg = f"Node {n.name} moved; its new address is {n.address}."
    except DomainError as e:
        if e.kind == Kind.FORBIDDEN or (e.kind == Kind.NOT_FOUND and "CVLAN" not in e.message):
            raise
        f.fail(e, ("name", "cvlan"), {"CVLAN": "cvlan"})
        return await render_node(p, ref, f, 422)
    return p.redirect(p.url(f"nodes/{n.name}"), msg)


@page(tenant=True)
async def node_disable(p: Page) -> web.StreamResponse:
    return await _node_set_disabled(p, True)


@page(tenant=True)
async def node_enable(p: Page) -> web.StreamResponse:
    return await _node_set_disabled(p, False)


async def _node_set_disabled(p: Page, disabled: bool) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        n = await nodes.set_disabled(p.ctx, s, p.who, p.tenant, p.request.match_info["node"], disabled)
    if disabled:
        return p.redirect(p.url(f"nodes/{n.name}"), f"Node {n.name} disabled; its peers no longer see it.")
    return p.redirect(p.url(f"nodes/{n.name}"), f"Node {n.name} enabled; it keeps its address {n.address}.")


@page(tenant=True)
async def node_key_expiry(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    f = await p.form()
    off = f.get("disabled") == "yes"
    async with p.ctx.tx() as s:
        n = await nodes.set_key_expiry(p.ctx, s, p.who, p.tenant, p.request.match_info["node"], off)
    msg = "its next certificate lasts ten years" if off else "its next certificate gets the tenant's lifetime"
    return p.redirect(
        p.url(f"nodes/{n.name}"), f"Key expiry of {n.name} {'disabled' if off else 'enabled'}: {msg}."
    )


@page(tenant=True)
async def node_tags(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["node"]
    f = await p.form()
    try:
        async with p.ctx.tx() as s:
            n = await nodes.set_tags(p.ctx, s, p.who, p.tenant, ref, f.get("tags").split())
    except DomainError as e:
        if e.kind != Kind.INVALID:
            raise
        f.fail(e, ("tags",), {"name": "tags"})
        return await render_node(p, ref, f, 422)
    return p.redirect(p.url(f"nodes/{n.name}"), f"Tags of {n.name} saved.")


@page(tenant=True)
async def node_delete(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        n = await nodes.delete(p.ctx, s, p.who, p.tenant, p.request.match_info["node"])
    back = p.request.query.get("back", "")
    to = p.url(f"cvlans/{back}") if back else p.url("nodes")
    return p.redirect(to, f"Node {n.name} deleted; its certificate is no longer accepted.")


# --- enrollment tokens ------------------------------------------------------------------


async def _token_list(
    p: Page, form: Form | None = None, status: int = 200, created: dict[str, Any] | None = None
) -> web.Response:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        rows, total = await cvlans.list_tokens(s, p.who, p.tenant, None, LIST_LIMIT, 0)
        all_cvlans, _ = await cvlans.list_(s, p.who, p.tenant, LIST_LIMIT, 0)
    now = p.ctx.now()
    default = Form({"kind": "single", "expires": "24h", "cvlan": p.request.query.get("cvlan", "")})
    return p.render(
        "tokens.html",
        status=status,
        tokens=[(t, cn, token_status(t, now)) for t, cn in reversed(rows)],
        total=total,
        cvlans=[c for c, _ in all_cvlans],
        expiry_choices=EXPIRY_CHOICES,
        form=form or default,
        created=created,
        nav="tokens",
    )


@page(tenant=True)
async def token_list(p: Page) -> web.StreamResponse:
    return await _token_list(p)


def _uses(f: Form) -> int | None:
    text = f.get("uses")
    if not text:
        return None
    uses = parse_uint(text, cvlans.MAX_TOKEN_USES)
    if uses is None:
        raise DomainError(
            Kind.INVALID,
            f"uses must be a whole number up to {cvlans.MAX_TOKEN_USES:,}, or empty for no limit",
            {"field": "uses"},
        )
    return uses


def _expiry(f: Form) -> dt.timedelta:
    try:
        return parse_duration(f.get("expires") or "24h")
    except ValueError as e:
        raise DomainError(Kind.INVALID, str(e), {"field": "expires"}) from e


@page(tenant=True)
async def token_create(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    f = await p.form()
    tags = [t.strip() for t in f.get("tags").replace(",", " ").split() if t.strip()]
    try:
        if not f.get("cvlan"):
            raise DomainError(Kind.INVALID, "choose the CVLAN the new nodes will join", {"field": "cvlan"})
        reusable = f.get("kind") == "reusable"
        uses, expires = _uses(f), _expiry(f)
        async with p.ctx.tx() as s:
            tok, cv, text = await cvlans.create_token(
                p.ctx,
                s,
                p.who,
                p.tenant,
                f.get("cvlan"),
                reusable=reusable,
                max_uses=uses,
                expires_in=expires,
                tags=tags,
                ephemeral=f.get("ephemeral") == "yes",
            )
    except DomainError as e:
        if e.kind == Kind.FORBIDDEN or (e.kind == Kind.NOT_FOUND and "CVLAN" not in e.message):
            raise
        f.fail(e, ("cvlan", "kind", "uses", "expires", "tags"), {"max_uses": "uses", "name": "tags"})
        return await _token_list(p, f, 422)
    steps = cvlans.join_steps(p.ctx.settings.url, p.request.app[CA_PIN_KEY])
    created = {"token": text, "steps": "\n".join(steps), "cvlan": cv.name, "prefix": tok.prefix}
    return await _token_list(p, None, 201, created)


@page(tenant=True)
async def token_revoke(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        t = await cvlans.revoke_token(p.ctx, s, p.who, p.tenant, p.request.match_info["token"])
    return p.redirect(p.url("tokens"), f"Token {t.prefix} revoked: it can no longer enroll nodes.")


def routes(prefix: str) -> list[web.RouteDef]:
    t = prefix + "/t/{tenant}"
    return [
        web.get(t + "/", dashboard),
        web.get(t + "/cvlans", cvlan_list),
        web.post(t + "/cvlans", cvlan_create),
        web.get(t + "/cvlans/{cvlan}", cvlan_detail),
        web.post(t + "/cvlans/{cvlan}/edit", cvlan_edit),
        web.post(t + "/cvlans/{cvlan}/delete", cvlan_delete),
        web.post(t + "/cvlans/{cvlan}/vrouters", cvlan_vrouters),
        web.get(t + "/nodes", node_list),
        web.get(t + "/nodes/{node}", node_detail),
        web.post(t + "/nodes/{node}/edit", node_update),
        web.post(t + "/nodes/{node}/delete", node_delete),
        web.post(t + "/nodes/{node}/disable", node_disable),
        web.post(t + "/nodes/{node}/enable", node_enable),
        web.post(t + "/nodes/{node}/tags", node_tags),
        web.post(t + "/nodes/{node}/key-expiry", node_key_expiry),
        web.post(t + "/nodes/{node}/reauth/{decision:approve|reject}", node_reauth),
        web.post(t + "/key-expiry", tenant_key_expiry),
        web.get(t + "/tokens", token_list),
        web.post(t + "/tokens", token_create),
        web.post(t + "/tokens/{token}/revoke", token_revoke),
    ]
