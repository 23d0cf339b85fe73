"""Regions, relays and vrouters: platform objects managed by the platform admin."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit, credentials
from cvlan.controller.auth import Principal
from cvlan.controller.db.models import Cvlan, Region, Relay, Vrouter, VrouterCvlan
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext, bump, check_name, where_ref
from cvlan.controller.ops.views import RegionView, RelayView, VrouterView
from cvlan.wire.endpoint import split_hostport

RELAY_KIND = "cvrb"
VROUTER_KIND = "cvvb"


def start_command(program: str, server: str, token: str, ca_pin: str) -> str:
    """The command that starts a new relay or vrouter (program), as the API and the web UI print it."""
    return f"{program} --server {server} --token {token} --ca-pin {ca_pin}"


def check_hostport(field: str, value: str) -> str:
    try:
        split_hostport(value)
    except ValueError:
        raise DomainError(Kind.INVALID, f"{field} {value!r}: expected HOST:PORT", {"field": field}) from None
    return value


def check_url(field: str, value: str) -> str:
    if not value.startswith(("https://", "http://")) or any(c.isspace() or ord(c) < 32 for c in value):
        raise DomainError(Kind.INVALID, f"{field} {value!r}: expected an http(s):// URL", {"field": field})
    return value


async def _region(s: AsyncSession, ref: str) -> Region:
    stmt = where_ref(select(Region), ref, Region.id, Region.name == ref)
    r = await s.scalar(stmt)
    if r is None:
        raise DomainError(Kind.NOT_FOUND, f"region {ref!r} not found", {"field": "region"})
    return r


def region_view(r: Region) -> RegionView:
    return {"id": r.id, "name": r.name, "created_at": r.created_at}


async def create_region(ctx: OpsContext, s: AsyncSession, who: Principal, name: str) -> Region:
    who.require_platform("create region")
    check_name("region", name)
    if await s.scalar(select(Region.id).where(Region.name == name)):
        raise DomainError(Kind.CONFLICT, f"a region named {name!r} already exists", {"field": "name"})
    r = Region(name=name, created_at=ctx.now())
    s.add(r)
    await s.flush()
    audit.record(s, who, "region.create", "region", r.id, tenant_id=None, after={"name": name})
    return r


async def list_regions(s: AsyncSession, limit: int, offset: int) -> tuple[list[Region], int]:
    total = await s.scalar(select(func.count()).select_from(Region)) or 0
    return list(await s.scalars(select(Region).order_by(Region.id).limit(limit).offset(offset))), total


async def delete_region(ctx: OpsContext, s: AsyncSession, who: Principal, ref: str) -> None:
    who.require_platform("delete region")
    r = await _region(s, ref)
    used = (await s.scalar(select(func.count()).where(Relay.region_id == r.id)) or 0) + (
        await s.scalar(select(func.count()).where(Vrouter.region_id == r.id)) or 0
    )
    if used:
        raise DomainError(Kind.PRECONDITION, f"region {r.name!r} still has {used} relays or vrouters")
    audit.record(s, who, "region.delete", "region", r.id, tenant_id=None, before={"name": r.name})
    await s.delete(r)


def relay_view(x: Relay, region: str) -> RelayView:
    return {
        "id": x.id,
        "name": x.name,
        "region": region,
        "url": x.url,
        "stun": x.stun,
        "last_seen": x.last_seen,
        "created_at": x.created_at,
    }


def vrouter_view(x: Vrouter, region: str) -> VrouterView:
    return {
        "id": x.id,
        "name": x.name,
        "region": region,
        "endpoint": x.endpoint,
        "wg_public_key": x.wg_public_key.hex() if x.wg_public_key else None,
        "last_seen": x.last_seen,
        "created_at": x.created_at,
    }


async def create_relay(
    ctx: OpsContext, s: AsyncSession, who: Principal, region: str, name: str, url: str, stun: str
) -> tuple[Relay, str]:
    """Register a relay; returns the bootstrap token (shown once) that its process starts with."""
    who.require_platform("create relay")
    r = await _region(s, region)
    check_name("relay", name)
    check_url("url", url)
    if stun:
        check_hostport("stun", stun)
    return await _create(ctx, s, who, Relay, "relay", RELAY_KIND, r, name, {"url": url, "stun": stun})


async def list_relays(s: AsyncSession, limit: int, offset: int) -> tuple[list[tuple[Relay, str]], int]:
    return await _list(s, Relay, limit, offset)


async def delete_relay(ctx: OpsContext, s: AsyncSession, who: Principal, ref: str) -> None:
    x = await _deleted(s, who, Relay, ref)
    audit.record(s, who, "relay.delete", "relay", x.id, tenant_id=None, before={"name": x.name, "url": x.url})
    await s.delete(x)


async def create_vrouter(
    ctx: OpsContext, s: AsyncSession, who: Principal, region: str, name: str, endpoint: str
) -> tuple[Vrouter, str]:
    who.require_platform("create vrouter")
    r = await _region(s, region)
    check_name("vrouter", name)
    check_hostport("endpoint", endpoint)
    return await _create(ctx, s, who, Vrouter, "vrouter", VROUTER_KIND, r, name, {"endpoint": endpoint})


Infra = TypeVar("Infra", Relay, Vrouter)


async def _create(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    model: type[Infra],
    kind: str,
    token_kind: str,
    region: Region,
    name: str,
    fields: dict[str, str],
) -> tuple[Infra, str]:
    """The flow relays and vrouters share: a unique name, a bootstrap token (shown once, stored
    hashed), the row, the audit record."""
    if await s.scalar(select(model.id).where(model.name == name)):
        raise DomainError(Kind.CONFLICT, f"a {kind} named {name!r} already exists", {"field": "name"})
    issued = credentials.issue(token_kind)
    x = model(
        region_id=region.id,
        name=name,
        bootstrap_prefix=issued.prefix,
        bootstrap_hash=issued.digest,
        created_at=ctx.now(),
        **fields,
    )
    s.add(x)
    await s.flush()
    after = {"name": name, "region": region.name, **fields}
    audit.record(s, who, f"{kind}.create", kind, x.id, tenant_id=None, after=after)
    return x, issued.text


async def list_vrouters(s: AsyncSession, limit: int, offset: int) -> tuple[list[tuple[Vrouter, str]], int]:
    return await _list(s, Vrouter, limit, offset)


async def _list(
    s: AsyncSession, model: type[Infra], limit: int, offset: int
) -> tuple[list[tuple[Infra, str]], int]:
    """A page of the relays or vrouters (model), each with its region's name, and how many there are."""
    total = await s.scalar(select(func.count()).select_from(model)) or 0
    q = select(model, Region.name).join(Region).order_by(model.id).limit(limit).offset(offset)
    return [(x, n) for x, n in (await s.execute(q)).all()], total


async def _deleted(s: AsyncSession, who: Principal, model: type[Infra], ref: str) -> Infra:
    """The relay or vrouter (model) a platform admin deletes, by name or id."""
    kind = kind_of(model)
    who.require_platform(f"delete {kind}")
    x: Infra | None = await s.scalar(where_ref(select(model), ref, model.id, model.name == ref))
    if x is None:
        raise DomainError(Kind.NOT_FOUND, f"{kind} {ref!r} not found")
    return x


async def delete_vrouter(ctx: OpsContext, s: AsyncSession, who: Principal, ref: str) -> None:
    x = await _deleted(s, who, Vrouter, ref)
    audit.record(
        s,
        who,
        "vrouter.delete",
        "vrouter",
        x.id,
        tenant_id=None,
        before={"name": x.name, "endpoint": x.endpoint},
    )
    # Its attachments go with it (ON DELETE CASCADE): the CVLANs it served get new maps.
    for c in await served(s, x.id):
        bump(s, c)
    await s.delete(x)


async def served(s: AsyncSession, vrouter_id: int) -> list[Cvlan]:
    """The CVLANs a vrouter is attached to."""
    q = (
        select(Cvlan)
        .join(VrouterCvlan, VrouterCvlan.cvlan_id == Cvlan.id)
        .where(VrouterCvlan.vrouter_id == vrouter_id)
    )
    return list(await s.scalars(q))


# --- the daemons' own calls (infraapi): who is calling ------------------------------------------

_TOKEN_KINDS = {Relay: RELAY_KIND, Vrouter: VROUTER_KIND}


def kind_of(model: type[Infra]) -> str:
    """ "relay" or "vrouter": the certificate kind, the audit target type."""
    return "relay" if model is Relay else "vrouter"


async def by_token(s: AsyncSession, model: type[Infra], text: str) -> Infra:
    """The relay or vrouter (model) whose bootstrap token this is; every failure answers the same."""
    kind = kind_of(model)
    bad = DomainError(Kind.UNAUTHENTICATED, f"invalid {kind} bootstrap token, or the {kind} was deleted")
    parts = credentials.split(text, _TOKEN_KINDS[model])
    if parts is None:
        raise bad
    x = await s.scalar(select(model).where(model.bootstrap_prefix == parts[0]))
    if x is None or not credentials.check_secret(parts[1], x.bootstrap_hash):
        raise bad
    return x


async def by_cert_serial(s: AsyncSession, model: type[Infra], serial: int) -> Infra:
    """The relay or vrouter (model) whose current certificate has this serial number."""
    x = await s.scalar(select(model).where(model.cert_serial == format(serial, "x")))
    if x is None:
        raise DomainError(Kind.UNAUTHENTICATED, f"{kind_of(model)} certificate is no longer current")
    return x


async def region_name(s: AsyncSession, region_id: int) -> str:
    return await s.scalar(select(Region.name).where(Region.id == region_id)) or ""


async def vrouter_with_region(s: AsyncSession, vrouter_id: int) -> tuple[Vrouter, str] | None:
    """A vrouter and the name of its region, or None if it was deleted."""
    q = (
        select(Vrouter, Region.name)
        .join(Region, Region.id == Vrouter.region_id)
        .where(Vrouter.id == vrouter_id)
    )
    row = (await s.execute(q)).first()
    return (row[0], row[1]) if row is not None else None
