"""Peer health of a CVLAN for the management API, the UI and the CLI: the reachability matrix from
the members' last reports (stored with each node), with this process's events and history."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Node, Tenant
from cvlan.controller.health import matrix
from cvlan.controller.health.book import HealthBook
from cvlan.controller.ops.context import OpsContext, resolve_cvlan
from cvlan.controller.ops.nodes import is_online

MAX_MATRIX_MEMBERS = 256
"""Members shown in one CVLAN's matrix (n² pairs); the rest are counted in members_omitted."""
STALE_S = 300
"""Peer entries older than this (the node stopped reporting them) count as not measured."""


def member(n: Node, ctx: OpsContext, now: dt.datetime) -> matrix.Member:
    online = is_online(n, now, ctx.settings.offline_after_s)
    h = n.health or {}
    peers: tuple[dict[str, Any], ...] = ()
    at = h.get("peers_at")
    if online and isinstance(at, str) and isinstance(h.get("peers"), list):
        age = (now - dt.datetime.fromisoformat(at)).total_seconds()
        if age < STALE_S:
            peers = tuple(h["peers"])
    return matrix.Member(n.id, n.name, online, peers)


async def cvlan_health(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, book: HealthBook
) -> dict[str, Any]:
    who.require(tenant.id, Level.READ, "show CVLAN health")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    rows = (
        await s.scalars(
            select(Node)
            .where(Node.tenant_id == tenant.id, Node.cvlan_id == c.id)
            .order_by(Node.id)
            .limit(MAX_MATRIX_MEMBERS + 1)
        )
    ).all()
    now = ctx.now()
    members = [member(n, ctx, now) for n in rows[:MAX_MATRIX_MEMBERS]]
    names = {m.node_id: m.name for m in members}
    ps = matrix.pairs(members)
    return {
        "cvlan": c.name,
        "cvlan_id": c.id,
        "members": [
            {"id": m.node_id, "name": m.name, "online": m.online, "measured": bool(m.peers)} for m in members
        ],
        "members_omitted": max(0, len(rows) - MAX_MATRIX_MEMBERS),
        "summary": matrix.summary(ps),
        "unreachable": [{"id": n, "name": names.get(n, "")} for n in sorted(matrix.unreachable(ps))],
        "pairs": [p.as_dict() for p in ps],
        "events": events(book, tenant, c.id, names),
        "history": book.history(c.id),
    }


def events(
    book: HealthBook, tenant: Tenant, cvlan_id: int | None, names: dict[int, str], limit: int = 100
) -> list[dict[str, Any]]:
    out = []
    for r in book.events(tenant.id, cvlan_id, limit):
        d = r.as_dict()
        d["node"] = names.get(r.event.node_id, "")
        d["peer"] = names.get(r.event.peer_id, "") if r.event.peer_id else ""
        out.append(d)
    return out


async def tenant_events(
    s: AsyncSession, who: Principal, tenant: Tenant, book: HealthBook, limit: int
) -> list[dict[str, Any]]:
    who.require(tenant.id, Level.READ, "list health events")
    rows = (await s.execute(select(Node.id, Node.name).where(Node.tenant_id == tenant.id))).all()
    return events(book, tenant, None, {i: n for i, n in rows}, limit)
