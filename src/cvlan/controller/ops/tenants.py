"""Tenants: platform-admin operations."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Cvlan, Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext, check_name, count_change, resolve_tenant
from cvlan.controller.ops.nodes import MAX_CERT_LIFETIME_S, MIN_CERT_LIFETIME_S
from cvlan.controller.ops.views import TenantCounts, TenantView
from cvlan.wire.ids import TenantId


def view(t: Tenant) -> TenantView:
    return {
        "id": t.id,
        "name": t.name,
        "display_name": t.display_name,
        "node_cert_lifetime_s": t.node_cert_lifetime_s,
        "created_at": t.created_at,
    }


async def set_cert_lifetime(
    ctx: OpsContext, s: AsyncSession, who: Principal, ref: str, seconds: int | None
) -> Tenant:
    """The tenant's key expiry policy: how long its nodes' certificates last (None: the controller's
    default). Applies from each node's next certificate (renewal at 2/3 of the current one)."""
    t = await resolve_tenant(s, who, ref)
    who.require(t.id, Level.ADMIN, "change the key expiry policy")
    if seconds is not None and not MIN_CERT_LIFETIME_S <= seconds <= MAX_CERT_LIFETIME_S:
        raise DomainError(
            Kind.INVALID,
            "node_cert_lifetime must be between 1h and 365d",
            {"field": "node_cert_lifetime"},
        )
    if t.node_cert_lifetime_s == seconds:
        return t
    before = {"node_cert_lifetime_s": t.node_cert_lifetime_s}
    t.node_cert_lifetime_s = seconds
    audit.record(
        s,
        who,
        "tenant.key_expiry",
        "tenant",
        t.id,
        tenant_id=t.id,
        before=before,
        after={"node_cert_lifetime_s": seconds},
    )
    return t


async def create(
    ctx: OpsContext, s: AsyncSession, who: Principal, name: str, display_name: str = ""
) -> Tenant:
    who.require_platform("create tenant")
    check_name("tenant", name)
    if await s.scalar(select(Tenant.id).where(Tenant.name == name)):
        raise DomainError(Kind.CONFLICT, f"a tenant named {name!r} already exists", {"field": "name"})
    t = Tenant(name=name, display_name=display_name, created_at=ctx.now())
    s.add(t)
    await s.flush()
    count_change(s, "tenants", 1)
    audit.record(s, who, "tenant.create", "tenant", t.id, tenant_id=t.id, after=_audit(t))
    return t


async def list_(s: AsyncSession, who: Principal, limit: int, offset: int) -> tuple[list[Tenant], int]:
    stmt = select(Tenant)
    if not who.platform_admin:
        stmt = stmt.where(Tenant.id.in_(list(who.roles)))
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = await s.scalars(stmt.order_by(Tenant.id).limit(limit).offset(offset))
    return list(rows), total


async def counts(s: AsyncSession, tenant_id: TenantId) -> TenantCounts:
    cv = await s.scalar(select(func.count()).where(Cvlan.tenant_id == tenant_id)) or 0
    nodes = await s.scalar(select(func.count()).where(Node.tenant_id == tenant_id)) or 0
    return {"cvlans": cv, "nodes": nodes}


async def delete(ctx: OpsContext, s: AsyncSession, who: Principal, ref: str) -> None:
    t = await resolve_tenant(s, who, ref)
    who.require_platform("delete tenant")
    c = await counts(s, t.id)
    if c["nodes"] or c["cvlans"]:
        raise DomainError(
            Kind.PRECONDITION,
            f"tenant {t.name!r} still has {c['cvlans']} CVLANs and {c['nodes']} nodes; delete them first",
        )
    audit.record(s, who, "tenant.delete", "tenant", t.id, tenant_id=t.id, before=_audit(t))
    await s.delete(t)
    count_change(s, "tenants", -1)


def _audit(t: Tenant) -> dict[str, object]:
    return {"name": t.name, "display_name": t.display_name}
