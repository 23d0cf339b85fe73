"""Which vrouters serve a CVLAN: attach, detach, list (tenant-scoped; operators of the tenant).

A vrouter is a platform object (any tenant may use any registered vrouter); the attachment row
(vrouter_cvlans) belongs to the tenant. Attaching or detaching changes what every member of the
CVLAN sees (the vrouter peer in its map), so the CVLAN's version is bumped in the same transaction.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Region, Tenant, Vrouter, VrouterCvlan
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext, bump, resolve_cvlan, where_ref
from cvlan.controller.ops.views import AttachmentView


async def resolve_vrouter(s: AsyncSession, ref: str) -> Vrouter:
    stmt = where_ref(select(Vrouter), ref, Vrouter.id, Vrouter.name == ref)
    v = await s.scalar(stmt)
    if v is None:
        raise DomainError(Kind.NOT_FOUND, f"vrouter {ref!r} not found", {"field": "vrouter"})
    return v


def attachment_view(v: Vrouter, region: str, cvlan: str) -> AttachmentView:
    return {
        "vrouter": v.name,
        "vrouter_id": v.id,
        "region": region,
        "cvlan": cvlan,
        "endpoint": v.endpoint,
        "registered": v.wg_public_key is not None,
        "last_seen": v.last_seen,
    }


async def attach(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, vrouter_ref: str
) -> tuple[AttachmentView, bool]:
    """Make the vrouter serve the CVLAN. Returns (view, changed); attaching twice changes nothing."""
    who.require(tenant.id, Level.OPERATE, "attach vrouter")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    v = await resolve_vrouter(s, vrouter_ref)
    region = await s.scalar(select(Region.name).where(Region.id == v.region_id)) or ""
    view = attachment_view(v, region, c.name)
    if await s.get(VrouterCvlan, (v.id, c.id)) is not None:
        return view, False
    s.add(VrouterCvlan(vrouter_id=v.id, cvlan_id=c.id, tenant_id=tenant.id))
    bump(s, c)
    audit.record(
        s,
        who,
        "vrouter.attach",
        "cvlan",
        c.id,
        tenant_id=tenant.id,
        after={"vrouter": v.name, "region": region, "cvlan": c.name},
    )
    return view, True


async def detach(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, vrouter_ref: str
) -> None:
    """Stop the vrouter serving the CVLAN; NOT_FOUND if it does not serve it."""
    who.require(tenant.id, Level.OPERATE, "detach vrouter")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    v = await resolve_vrouter(s, vrouter_ref)
    row = await s.get(VrouterCvlan, (v.id, c.id))
    if row is None or row.tenant_id != tenant.id:
        raise DomainError(Kind.NOT_FOUND, f"vrouter {v.name!r} does not serve CVLAN {c.name!r}")
    await s.delete(row)
    bump(s, c)
    audit.record(
        s,
        who,
        "vrouter.detach",
        "cvlan",
        c.id,
        tenant_id=tenant.id,
        before={"vrouter": v.name, "cvlan": c.name},
    )


async def list_for_cvlan(
    s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str
) -> list[AttachmentView]:
    who.require(tenant.id, Level.READ, "list vrouters")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    rows = (
        await s.execute(
            select(Vrouter, Region.name)
            .join(VrouterCvlan, VrouterCvlan.vrouter_id == Vrouter.id)
            .join(Region, Region.id == Vrouter.region_id)
            .where(VrouterCvlan.cvlan_id == c.id, VrouterCvlan.tenant_id == tenant.id)
            .order_by(Vrouter.id)
        )
    ).all()
    return [attachment_view(v, rn, c.name) for v, rn in rows]
