"""A CVLAN's DNS page: its zone, tenant-defined records and split-DNS forwarders (docs/DNS.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import dns
from cvlan.controller.ops.context import Tx
from cvlan.controller.web.core import Form, Page, page
from cvlan.wire.dnsnames import RECORD_TYPES

RECORD_FIELDS = ("name", "type", "value", "ttl")
FORWARD_FIELDS = ("domain", "servers")


async def _dns_page(
    p: Page, ref: str, record_form: Form | None = None, forward_form: Form | None = None, status: int = 200
) -> web.Response:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        shown = await dns.show(p.ctx, s, p.who, p.tenant, ref)
    return p.render(
        "dns.html",
        status=status,
        cvlan_name=shown["cvlan"],
        dns=shown,
        record_types=RECORD_TYPES,
        record_form=record_form or Form({"type": "A", "ttl": "0"}),
        forward_form=forward_form or Form({}),
        nav="cvlans",
    )


@page(tenant=True)
async def dns_show(p: Page) -> web.StreamResponse:
    return await _dns_page(p, p.request.match_info["cvlan"])


def _ttl(text: str) -> int:
    try:
        return int(text or "0")
    except ValueError:
        raise DomainError(
            Kind.INVALID, f"ttl {text!r}: expected a number of seconds", {"field": "ttl"}
        ) from None


async def _submit(
    p: Page,
    f: Form,
    form: str,
    fields: tuple[str, ...],
    aliases: dict[str, str],
    change: Callable[[Tx], Awaitable[str]],
) -> web.StreamResponse:
    """Make the change a DNS form asks for in one transaction and go back to the DNS page with the
    change's message; a refusal shows the page again (422) with the form (form) and its fields marked."""
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    try:
        async with p.ctx.tx() as s:
            done = await change(s)
    except DomainError as e:
        if e.kind in (Kind.FORBIDDEN, Kind.NOT_FOUND):
            raise
        f.fail(e, fields, aliases)
        return await _dns_page(p, ref, **{form: f}, status=422)
    return p.redirect(p.url(f"cvlans/{ref}/dns"), done)


@page(tenant=True)
async def record_add(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    tenant, ref, f = p.tenant, p.request.match_info["cvlan"], await p.form()

    async def add(s: Tx) -> str:
        ttl = _ttl(f.get("ttl"))
        r = await dns.add_record(
            p.ctx, s, p.who, tenant, ref, f.get("name"), f.get("type"), f.get("value"), ttl
        )
        return f"Record {r.name} {r.rtype} added; nodes get it with their next map."

    return await _submit(p, f, "record_form", RECORD_FIELDS, {"record": "value"}, add)


@page(tenant=True)
async def record_delete(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    await p.form()  # checks the CSRF token
    try:
        rid = int(p.request.match_info["record"])
    except ValueError:
        raise DomainError(Kind.NOT_FOUND, "dns record") from None
    async with p.ctx.tx() as s:
        await dns.delete_record(p.ctx, s, p.who, p.tenant, ref, rid)
    return p.redirect(p.url(f"cvlans/{ref}/dns"), "Record deleted.")


@page(tenant=True)
async def forward_set(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    tenant, ref, f = p.tenant, p.request.match_info["cvlan"], await p.form()
    servers = f.get("servers").replace(",", " ").split()

    async def set_forwarder(s: Tx) -> str:
        fw = await dns.set_forwarder(p.ctx, s, p.who, tenant, ref, f.get("domain"), servers)
        return f"Queries for {fw.domain} now go to {', '.join(fw.servers)}."

    return await _submit(p, f, "forward_form", FORWARD_FIELDS, {"server": "servers"}, set_forwarder)


@page(tenant=True)
async def forward_delete(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    await p.form()
    async with p.ctx.tx() as s:
        await dns.delete_forwarder(p.ctx, s, p.who, p.tenant, ref, p.request.match_info["domain"])
    return p.redirect(p.url(f"cvlans/{ref}/dns"), "Forwarder removed.")


def routes(prefix: str) -> list[web.RouteDef]:
    c = prefix + "/t/{tenant}/cvlans/{cvlan}/dns"
    return [
        web.get(c, dns_show),
        web.post(c + "/records", record_add),
        web.post(c + "/records/{record}/delete", record_delete),
        web.post(c + "/forwarders", forward_set),
        web.post(c + "/forwarders/{domain}/delete", forward_delete),
    ]
