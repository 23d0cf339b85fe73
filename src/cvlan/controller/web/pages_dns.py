"""A CVLAN's DNS page: its zone, tenant-defined records and split-DNS forwarders (docs/DNS.md)."""

from __future__ import annotations

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


@page(tenant=True)
async def record_add(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    tenant, ref, f = p.tenant, p.request.match_info["cvlan"], await p.form()

    async def add(s: Tx) -> tuple[str, str]:
        ttl = _ttl(f.get("ttl"))
        r = await dns.add_record(
            p.ctx, s, p.who, tenant, ref, f.get("name"), f.get("type"), f.get("value"), ttl
        )
        return p.url(
            f"cvlans/{ref}/dns"
        ), f"Record {r.name} {r.rtype} added; nodes get it with their next map."

    async def again(form: Form) -> web.Response:
        return await _dns_page(p, ref, record_form=form, status=422)

    return await p.submit(f, add, again, RECORD_FIELDS, {"record": "value"})


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

    async def set_forwarder(s: Tx) -> tuple[str, str]:
        fw = await dns.set_forwarder(p.ctx, s, p.who, tenant, ref, f.get("domain"), servers)
        return p.url(f"cvlans/{ref}/dns"), f"Queries for {fw.domain} now go to {', '.join(fw.servers)}."

    async def again(form: Form) -> web.Response:
        return await _dns_page(p, ref, forward_form=form, status=422)

    return await p.submit(f, set_forwarder, again, FORWARD_FIELDS, {"server": "servers"})


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
