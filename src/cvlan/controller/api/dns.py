"""Management API: a CVLAN's DNS zone, tenant-defined records and split-DNS forwarders (docs/DNS.md)."""

from __future__ import annotations

from pydantic import Field

from cvlan.common.numbers import parse_uint
from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import Body, Call
from cvlan.controller.ops import dns
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import DnsForwarderView, DnsRecordView, DnsView
from cvlan.wire.dnsnames import MAX_TTL

D = "/cvlans/{cvlan}/dns"


class RecordCreate(Body):
    name: str = Field(max_length=160, description='owner inside the CVLAN\'s zone, e.g. "git"; "@" the zone')
    type: str = Field(max_length=10, description="A, AAAA, CNAME, TXT, MX or SRV")
    value: str = Field(max_length=600, description='zone-file text, e.g. "10.1.0.7" or "10 mail.example."')
    ttl: int = Field(default=0, ge=0, le=MAX_TTL, description="seconds; 0: the resolver's default (60)")


class ForwarderSet(Body):
    servers: list[str] = Field(
        min_length=1, max_length=dns.MAX_SERVERS, description="DNS server IP addresses"
    )


@tenant_route("GET", D, summary="Show a CVLAN's DNS zone, records and forwarders", tag="dns")
async def show_dns(c: Call, s: Tx, t: Tenant) -> DnsView:
    return await dns.show(c.ctx, s, c.who, t, c.params["cvlan"])


@tenant_route(
    "POST",
    D + "/records",
    summary="Add a DNS record to a CVLAN's zone",
    tag="dns",
    body=RecordCreate,
    status=201,
)
async def add_dns_record(c: Call, s: Tx, t: Tenant) -> DnsRecordView:
    b = c.body
    r = await dns.add_record(c.ctx, s, c.who, t, c.params["cvlan"], b.name, b.type, b.value, b.ttl)
    return dns.record_view(r)


@tenant_route("DELETE", D + "/records/{record}", summary="Delete a DNS record (by id)", tag="dns", status=204)
async def delete_dns_record(c: Call, s: Tx, t: Tenant) -> None:
    rid = parse_uint(c.params["record"])
    if rid is None:
        raise DomainError(Kind.NOT_FOUND, f"dns record {c.params['record']!r}")
    await dns.delete_record(c.ctx, s, c.who, t, c.params["cvlan"], rid)


@tenant_route(
    "PUT",
    D + "/forwarders/{domain}",
    summary="Send a domain's queries from the CVLAN's nodes to these DNS servers (split DNS)",
    tag="dns",
    body=ForwarderSet,
)
async def set_dns_forwarder(c: Call, s: Tx, t: Tenant) -> DnsForwarderView:
    f = await dns.set_forwarder(c.ctx, s, c.who, t, c.params["cvlan"], c.params["domain"], c.body.servers)
    return dns.forwarder_view(f)


@tenant_route(
    "DELETE", D + "/forwarders/{domain}", summary="Remove a domain's forwarder", tag="dns", status=204
)
async def delete_dns_forwarder(c: Call, s: Tx, t: Tenant) -> None:
    await dns.delete_forwarder(c.ctx, s, c.who, t, c.params["cvlan"], c.params["domain"])
