"""CVLAN policies (set, show, clear) and the denied flows nodes report."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Cvlan, DeniedFlow, Policy, Tenant
from cvlan.controller.ops.context import OpsContext, bump, resolve_cvlan
from cvlan.controller.ops.views import DeniedFlowView, PolicyView
from cvlan.controller.policy import PolicyDocument, content_hash, parse_document


def view(c: Cvlan, p: Policy | None) -> PolicyView:
    return {
        "cvlan": c.name,
        "cvlan_id": c.id,
        "policy": p.document if p else None,
        "hash": p.content_hash if p else "",
        "updated_at": p.updated_at if p else None,
        "effect": "rules apply; everything else is denied"
        if p
        else "no policy: all members reach each other",
    }


async def load(s: AsyncSession, cvlan_id: int) -> PolicyDocument | None:
    p = await s.get(Policy, cvlan_id)
    return PolicyDocument.model_validate(p.document) if p else None


async def get(s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str) -> tuple[Cvlan, Policy | None]:
    who.require(tenant.id, Level.READ, "show policy")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    return c, await s.get(Policy, c.id)


async def set_(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, data: Any
) -> tuple[Cvlan, Policy | None, bool]:
    """Replace the CVLAN's policy. Returns changed=False (and bumps nothing) if the content is the same."""
    who.require(tenant.id, Level.OPERATE, "set policy")
    doc = parse_document(data)
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    p = await s.get(Policy, c.id)
    h = content_hash(doc)
    if p is not None and p.content_hash == h:
        return c, p, False
    before = p.document if p else None
    doc_json = doc.model_dump(mode="json")
    if p is None:
        p = Policy(
            cvlan_id=c.id, tenant_id=tenant.id, document=doc_json, content_hash=h, updated_at=ctx.now()
        )
        s.add(p)
    else:
        p.document, p.content_hash, p.updated_at = doc_json, h, ctx.now()
    bump(s, c)
    audit.record(s, who, "policy.set", "cvlan", c.id, tenant_id=tenant.id, before=before, after=doc_json)
    return c, p, True


async def clear(ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str) -> None:
    who.require(tenant.id, Level.OPERATE, "clear policy")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    p = await s.get(Policy, c.id)
    if p is None:
        return
    audit.record(s, who, "policy.clear", "cvlan", c.id, tenant_id=tenant.id, before=p.document)
    await s.delete(p)
    bump(s, c)


async def denied_flows(
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    cvlan_ref: str | None,
    since: dt.datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[DeniedFlowView], int]:
    """Denied flows of the tenant, summed per (CVLAN, src, dst, proto, dport), most packets first."""
    who.require(tenant.id, Level.READ, "list denied flows")
    stmt = (
        select(
            Cvlan.name,
            DeniedFlow.src,
            DeniedFlow.dst,
            DeniedFlow.proto,
            DeniedFlow.dport,
            func.sum(DeniedFlow.packets),
            func.min(DeniedFlow.first_seen),
            func.max(DeniedFlow.last_seen),
            func.count(),
        )
        .join(Cvlan, Cvlan.id == DeniedFlow.cvlan_id)
        .where(DeniedFlow.tenant_id == tenant.id)
        .group_by(Cvlan.name, DeniedFlow.src, DeniedFlow.dst, DeniedFlow.proto, DeniedFlow.dport)
    )
    if cvlan_ref:
        c = await resolve_cvlan(s, tenant.id, cvlan_ref)
        stmt = stmt.where(DeniedFlow.cvlan_id == c.id)
    if since:
        stmt = stmt.where(DeniedFlow.last_seen >= since)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (
        await s.execute(stmt.order_by(func.sum(DeniedFlow.packets).desc()).limit(limit).offset(offset))
    ).all()
    items: list[DeniedFlowView] = [
        {
            "cvlan": cv,
            "src": src,
            "dst": dst,
            "proto": proto,
            "dport": dport,
            "packets": int(pk),
            "first_seen": _utc(fs),
            "last_seen": _utc(ls),
            "reports": n,
        }
        for cv, src, dst, proto, dport, pk, fs, ls, n in rows
    ]
    return items, total


def _utc(t: Any) -> Any:
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t)
    if isinstance(t, dt.datetime) and t.tzinfo is None:
        return t.replace(tzinfo=dt.UTC)
    return t
