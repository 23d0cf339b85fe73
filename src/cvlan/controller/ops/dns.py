"""DNS of a CVLAN: the zone its nodes' names live in, tenant-defined records, split-DNS forwarders.

Records and forwarders are part of the map (node.proto DnsConfig): every change bumps the CVLAN."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Cvlan, DnsForwarder, DnsRecord, Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext, bump, resolve_cvlan
from cvlan.controller.ops.views import DnsForwarderView, DnsRecordView, DnsView
from cvlan.wire import dnsnames
from cvlan.wire.dnsnames import DnsNameError

MAX_RECORDS = 500
MAX_FORWARDERS = 50
MAX_SERVERS = 4


def zone_of(ctx: OpsContext, c: Cvlan, tenant_name: str) -> str:
    return dnsnames.zone(c.name, tenant_name, ctx.settings.dns_domain)


def record_view(r: DnsRecord) -> DnsRecordView:
    return {"id": r.id, "name": r.name, "type": r.rtype, "value": r.value, "ttl": r.ttl}


def forwarder_view(f: DnsForwarder) -> DnsForwarderView:
    return {"id": f.id, "domain": f.domain, "servers": list(f.servers)}


def _invalid(e: DnsNameError, field: str) -> DomainError:
    return DomainError(Kind.INVALID, str(e), {"field": field})


async def show(ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str) -> DnsView:
    """The CVLAN's zone, resolver address, records and forwarders."""
    who.require(tenant.id, Level.READ, "show dns")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    recs = await s.scalars(select(DnsRecord).where(DnsRecord.cvlan_id == c.id).order_by(DnsRecord.id))
    fwds = await s.scalars(
        select(DnsForwarder).where(DnsForwarder.cvlan_id == c.id).order_by(DnsForwarder.id)
    )
    return {
        "cvlan": c.name,
        "zone": zone_of(ctx, c, tenant.name),
        "resolver": dnsnames.RESOLVER_ADDRESS,
        "records": [record_view(r) for r in recs],
        "forwarders": [forwarder_view(f) for f in fwds],
    }


async def add_record(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    cvlan_ref: str,
    name: str,
    rtype: str,
    value: str,
    ttl: int,
) -> DnsRecord:
    who.require(tenant.id, Level.OPERATE, "add dns record")
    try:
        owner, t, text, ttl = dnsnames.check_record(name, rtype, value, ttl)
    except DnsNameError as e:
        raise _invalid(e, str(e).split(" ", 2)[1]) from None
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    existing = list(await s.scalars(select(DnsRecord).where(DnsRecord.cvlan_id == c.id)))
    if len(existing) >= MAX_RECORDS:
        raise DomainError(Kind.CONFLICT, f"CVLAN {c.name} already has {MAX_RECORDS} records")
    _check_record_fits(existing, owner, t, text)
    r = DnsRecord(
        tenant_id=tenant.id, cvlan_id=c.id, name=owner, rtype=t, value=text, ttl=ttl, created_at=ctx.now()
    )
    s.add(r)
    await s.flush()
    bump(s, c)
    audit.record(s, who, "dns.record.add", "cvlan", c.id, tenant_id=tenant.id, after=record_view(r))
    return r


def _check_record_fits(existing: list[DnsRecord], owner: str, t: str, text: str) -> None:
    """A CNAME owns its name alone (RFC 1034 3.6.2); a record is not added twice."""
    for r in existing:
        if r.name != owner:
            continue
        if r.rtype == t and r.value == text:
            raise DomainError(Kind.CONFLICT, f"record {owner} {t} {text} already exists", {"field": "value"})
        if "CNAME" in (r.rtype, t):
            raise DomainError(
                Kind.CONFLICT,
                f"{owner} already has a {r.rtype} record; a CNAME cannot share its name with other records",
                {"field": "name"},
            )


async def delete_record(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, record_id: int
) -> None:
    who.require(tenant.id, Level.OPERATE, "delete dns record")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    r = await s.scalar(
        select(DnsRecord).where(
            DnsRecord.id == record_id, DnsRecord.cvlan_id == c.id, DnsRecord.tenant_id == tenant.id
        )
    )
    if r is None:
        raise DomainError(Kind.NOT_FOUND, f"dns record {record_id} in CVLAN {c.name}")
    audit.record(s, who, "dns.record.delete", "cvlan", c.id, tenant_id=tenant.id, before=record_view(r))
    await s.delete(r)
    bump(s, c)


def _check_forwarder(domain: str, servers: list[str]) -> tuple[str, list[str]]:
    try:
        d = dnsnames.check_domain(domain)
    except DnsNameError as e:
        raise _invalid(e, "domain") from None
    if not isinstance(servers, list) or not 1 <= len(servers) <= MAX_SERVERS:
        raise DomainError(
            Kind.INVALID, f"servers: give 1 to {MAX_SERVERS} DNS server addresses", {"field": "servers"}
        )
    try:
        return d, [dnsnames.check_server(str(x)) for x in servers]
    except DnsNameError as e:
        raise _invalid(e, "servers") from None


async def set_forwarder(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    cvlan_ref: str,
    domain: str,
    servers: list[str],
) -> DnsForwarder:
    """Create or replace the forwarder of a domain."""
    who.require(tenant.id, Level.OPERATE, "set dns forwarder")
    d, srv = _check_forwarder(domain, servers)
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    zone = zone_of(ctx, c, tenant.name)
    if d == zone or d.endswith("." + zone) or zone.endswith("." + d):
        raise DomainError(
            Kind.INVALID, f"domain {d}: overlaps the CVLAN's own zone {zone}", {"field": "domain"}
        )
    rows = list(await s.scalars(select(DnsForwarder).where(DnsForwarder.cvlan_id == c.id)))
    f = next((x for x in rows if x.domain == d), None)
    before = forwarder_view(f) if f is not None else None
    if f is None:
        if len(rows) >= MAX_FORWARDERS:
            raise DomainError(Kind.CONFLICT, f"CVLAN {c.name} already has {MAX_FORWARDERS} forwarders")
        f = DnsForwarder(tenant_id=tenant.id, cvlan_id=c.id, domain=d, servers=srv, created_at=ctx.now())
        s.add(f)
        await s.flush()
    elif list(f.servers) == srv:
        return f
    f.servers = srv
    bump(s, c)
    audit.record(
        s,
        who,
        "dns.forwarder.set",
        "cvlan",
        c.id,
        tenant_id=tenant.id,
        before=before,
        after=forwarder_view(f),
    )
    return f


async def delete_forwarder(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, domain: str
) -> None:
    who.require(tenant.id, Level.OPERATE, "delete dns forwarder")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    d = domain.strip().lower().rstrip(".")
    f = await s.scalar(
        select(DnsForwarder).where(
            DnsForwarder.cvlan_id == c.id, DnsForwarder.domain == d, DnsForwarder.tenant_id == tenant.id
        )
    )
    if f is None:
        raise DomainError(Kind.NOT_FOUND, f"dns forwarder for {domain!r} in CVLAN {c.name}")
    audit.record(s, who, "dns.forwarder.delete", "cvlan", c.id, tenant_id=tenant.id, before=forwarder_view(f))
    await s.delete(f)
    bump(s, c)


async def load_for_map(s: AsyncSession, cvlan_id: int) -> tuple[list[DnsRecord], list[DnsForwarder]]:
    """The CVLAN's records and forwarders, in a stable order (for the mapper)."""
    recs = await s.scalars(
        select(DnsRecord).where(DnsRecord.cvlan_id == cvlan_id).order_by(DnsRecord.name, DnsRecord.id)
    )
    fwds = await s.scalars(
        select(DnsForwarder).where(DnsForwarder.cvlan_id == cvlan_id).order_by(DnsForwarder.domain)
    )
    return list(recs), list(fwds)


async def node_dns_name(ctx: OpsContext, s: AsyncSession, tenant: Tenant, n: Node, cvlan_name: str) -> str:
    """The node's name as its CVLAN's map gives it (clash suffixes included; "" while disabled)."""
    if n.disabled:
        return ""
    rows = await s.execute(
        select(Node.id, Node.name).where(Node.cvlan_id == n.cvlan_id, Node.disabled.is_(False))
    )
    labels = dnsnames.assign_labels((int(i), str(name)) for i, name in rows.all())
    return f"{labels[n.id]}.{dnsnames.zone(cvlan_name, tenant.name, ctx.settings.dns_domain)}"
