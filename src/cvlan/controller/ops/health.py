"""Peer health of a CVLAN for the management API, the UI, the CLI and the node API: the reachability
matrix from the members' last reports (stored with each node), the degradation events those reports
show and a 24 h history -- all in the database, so every controller process answers the same and a
restart keeps them (docs/HEALTH.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import HealthEvent, HealthSample, Node, Tenant
from cvlan.controller.health import matrix
from cvlan.controller.ops.context import OpsContext, periodically, resolve_cvlan
from cvlan.controller.ops.nodes import is_online

log = logging.getLogger(__name__)

MAX_MATRIX_MEMBERS = 256
"""Members shown in one CVLAN's matrix (n² pairs); the rest are counted in members_omitted."""
STALE_S = matrix.STALE_S
HISTORY_S = 24 * 3600
"""Events and history samples older than this are pruned."""
SAMPLE_S = 60
"""At most one history sample per CVLAN a minute: 1,440 samples over 24 h."""
MAX_EVENTS_PER_CVLAN = 1000
"""Events kept per CVLAN (the oldest are deleted as new ones are written)."""
PRUNE_EVERY_S = 60.0

Entries = tuple[Mapping[str, Any], ...]


def _fresh_peers(h: Mapping[str, Any] | None, now: dt.datetime) -> Entries:
    """A stored health's peer entries; () if older than STALE_S or absent."""
    h = h or {}
    raw = h.get("peers_at")
    if not isinstance(raw, str) or not isinstance(h.get("peers"), list):
        return ()
    if (now - dt.datetime.fromisoformat(raw)).total_seconds() >= STALE_S:
        return ()
    return tuple(h["peers"])


def member(n: Node, ctx: OpsContext, now: dt.datetime) -> matrix.Member:
    online = is_online(n, now, ctx.settings.offline_after_s)
    peers = _fresh_peers(n.health, now) if online else ()
    return matrix.Member(n.id, n.name, online, peers)


async def _members(s: AsyncSession, tenant_id: int, cvlan_id: int) -> Sequence[Node]:
    return (
        await s.scalars(
            select(Node)
            .where(Node.tenant_id == tenant_id, Node.cvlan_id == cvlan_id)
            .order_by(Node.id)
            .limit(MAX_MATRIX_MEMBERS + 1)
        )
    ).all()


# --- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """One node's peer entries as a report gave them, waiting to be written."""

    tenant_id: int
    cvlan_id: int
    peers: tuple[Mapping[str, Any], ...]
    at: str = ""
    """When the controller got it (ISO 8601): the node's health says "peers_at"."""


@dataclass(frozen=True, slots=True)
class Found:
    """An event found in a batch, with where it belongs (for the log and the metrics)."""

    tenant_id: int
    cvlan_id: int
    event: matrix.Event


async def take_reports(ctx: OpsContext, s: AsyncSession, reports: Mapping[int, Report]) -> list[Found]:
    """The degradations and recoveries a batch of reports shows, written as events, and the history
    samples that are due. Called in the transaction that stores the reports (the liveness flush),
    before it does: each report is compared with the node's previous one as the database holds it,
    whichever controller process wrote that one (docs/HEALTH.md)."""
    if not reports:
        return []
    now = ctx.now()
    rows = (
        await s.execute(
            select(Node.id, Node.name, Node.cvlan_id, Node.health).where(Node.id.in_(list(reports)))
        )
    ).all()
    found: list[Found] = []
    moved: set[int] = set()
    touched: dict[int, int] = {}
    """CVLAN -> tenant, of every report still in its CVLAN."""
    for node_id, name, cvlan_id, stored in rows:
        r = reports[node_id]
        if cvlan_id != r.cvlan_id:
            continue  # moved since it reported: the report no longer says anything of this CVLAN
        touched[cvlan_id] = r.tenant_id
        old = _keyed(node_id, name, _fresh_peers(stored, now))
        new = _keyed(node_id, name, r.peers)
        found += [Found(r.tenant_id, cvlan_id, e) for e in matrix.pair_events(old, new)]
        if _down_moved(old, new):
            moved.add(cvlan_id)
    due = await _samples_due(s, list(touched), now)
    members = await _members_of(s, moved | due)
    for cvlan_id in sorted(moved | due):
        tenant_id = touched[cvlan_id]
        before, after = _cvlan_pairs(ctx, members.get(cvlan_id, []), reports, now)
        if cvlan_id in moved:
            events = matrix.reach_events(matrix.unreachable(before), matrix.unreachable(after))
            found += [Found(tenant_id, cvlan_id, e) for e in events]
        if cvlan_id in due:
            s.add(_sample(tenant_id, cvlan_id, now, after))
    await _write_events(s, found, now)
    return found


def _keyed(node_id: int, name: str, peers: Entries) -> dict[int, matrix.Pair]:
    return {p.dst: p for p in matrix.pairs_of(matrix.Member(node_id, name, True, peers))}


async def _members_of(s: AsyncSession, cvlan_ids: set[int]) -> dict[int, list[Node]]:
    """The first MAX_MATRIX_MEMBERS members of each CVLAN, in one query for the whole batch."""
    out: dict[int, list[Node]] = {}
    if cvlan_ids:
        rows = await s.scalars(select(Node).where(Node.cvlan_id.in_(sorted(cvlan_ids))).order_by(Node.id))
        for n in rows:
            ms = out.setdefault(n.cvlan_id, [])
            if len(ms) < MAX_MATRIX_MEMBERS:
                ms.append(n)
    return out


def _cvlan_pairs(
    ctx: OpsContext, nodes: Sequence[Node], reports: Mapping[int, Report], now: dt.datetime
) -> tuple[list[matrix.Pair], list[matrix.Pair]]:
    """A CVLAN's matrix as stored, and with the batch's reports in it."""
    before, after = [], []
    for n in nodes:
        m = member(n, ctx, now)
        before.append(m)
        r = reports.get(n.id)
        after.append(matrix.Member(n.id, n.name, True, r.peers) if r is not None else m)
    return matrix.pairs(before), matrix.pairs(after)


async def _write_events(s: AsyncSession, found: Sequence[Found], now: dt.datetime) -> None:
    if not found:
        return
    rows = [
        {
            "tenant_id": f.tenant_id,
            "cvlan_id": f.cvlan_id,
            "at": now,
            "kind": f.event.kind,
            "node_id": f.event.node_id,
            "peer_id": f.event.peer_id,
            "detail": f.event.detail[:100],
        }
        for f in found
    ]
    await s.execute(insert(HealthEvent), rows)
    for cvlan_id in sorted({f.cvlan_id for f in found}):
        await _cap_events(s, cvlan_id)


def _down_moved(old: Mapping[int, matrix.Pair], new: Mapping[int, matrix.Pair]) -> bool:
    """Whether a pair went down or came back (only then can a node become unreachable or reachable)."""
    return any(
        (old[k].state == "down" if k in old else False) != (new[k].state == "down" if k in new else False)
        for k in old.keys() | new.keys()
    )


async def _samples_due(s: AsyncSession, cvlan_ids: list[int], now: dt.datetime) -> set[int]:
    """The CVLANs whose latest history sample is SAMPLE_S old or more (or that have none)."""
    if not cvlan_ids:
        return set()
    last = dict(
        (
            await s.execute(
                select(HealthSample.cvlan_id, func.max(HealthSample.at))
                .where(HealthSample.cvlan_id.in_(cvlan_ids))
                .group_by(HealthSample.cvlan_id)
            )
        ).all()
    )
    return {c for c in cvlan_ids if c not in last or (now - last[c]).total_seconds() >= SAMPLE_S}


def _sample(tenant_id: int, cvlan_id: int, now: dt.datetime, ps: Sequence[matrix.Pair]) -> HealthSample:
    rtts = [p.rtt_ms for p in ps if p.rtt_ms is not None]
    return HealthSample(
        tenant_id=tenant_id,
        cvlan_id=cvlan_id,
        at=now,
        **matrix.summary(ps),
        median_rtt_ms=round(statistics.median(rtts), 3) if rtts else None,
    )


async def _cap_events(s: AsyncSession, cvlan_id: int) -> None:
    """Keep the CVLAN's newest MAX_EVENTS_PER_CVLAN events."""
    cut = await s.scalar(
        select(HealthEvent.id)
        .where(HealthEvent.cvlan_id == cvlan_id)
        .order_by(HealthEvent.id.desc())
        .offset(MAX_EVENTS_PER_CVLAN)
        .limit(1)
    )
    if cut is not None:
        await s.execute(delete(HealthEvent).where(HealthEvent.cvlan_id == cvlan_id, HealthEvent.id <= cut))


async def prune(ctx: OpsContext, s: AsyncSession) -> int:
    """Delete events and history samples older than HISTORY_S; how many rows went."""
    cut = ctx.now() - dt.timedelta(seconds=HISTORY_S)
    gone = 0
    for model in (HealthEvent, HealthSample):
        r = await s.execute(delete(model).where(model.at < cut))
        gone += getattr(r, "rowcount", 0) or 0
    return gone


async def run_pruner(ctx: OpsContext, stop: asyncio.Event, every: float = PRUNE_EVERY_S) -> None:
    """Prune the health events and history every `every` seconds until stop."""

    async def once() -> None:
        async with ctx.tx() as s:
            await prune(ctx, s)

    await periodically(stop, every, once, "peer health pruning")


# --- reading -----------------------------------------------------------------------------------


async def cvlan_health(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str
) -> dict[str, Any]:
    who.require(tenant.id, Level.READ, "show CVLAN health")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    rows = await _members(s, tenant.id, c.id)
    now = ctx.now()
    members = [member(n, ctx, now) for n in rows[:MAX_MATRIX_MEMBERS]]
    ps = matrix.pairs(members)
    names = await _names(s, tenant.id)
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
        "events": await _events(s, tenant.id, c.id, names, 100),
        "history": await _history(s, c.id, now),
    }


async def tenant_events(s: AsyncSession, who: Principal, tenant: Tenant, limit: int) -> list[dict[str, Any]]:
    who.require(tenant.id, Level.READ, "list health events")
    return await _events(s, tenant.id, None, await _names(s, tenant.id), limit)


async def _names(s: AsyncSession, tenant_id: int) -> dict[int, str]:
    rows = (await s.execute(select(Node.id, Node.name).where(Node.tenant_id == tenant_id))).all()
    return {i: n for i, n in rows}


async def _events(
    s: AsyncSession, tenant_id: int, cvlan_id: int | None, names: Mapping[int, str], limit: int
) -> list[dict[str, Any]]:
    q = select(HealthEvent).where(HealthEvent.tenant_id == tenant_id)
    if cvlan_id is not None:
        q = q.where(HealthEvent.cvlan_id == cvlan_id)
    rows = (await s.scalars(q.order_by(HealthEvent.at.desc(), HealthEvent.id.desc()).limit(limit))).all()
    return [
        {
            "at": r.at,
            "cvlan_id": r.cvlan_id,
            "kind": r.kind,
            "node_id": r.node_id,
            "peer_id": r.peer_id,
            "detail": r.detail,
            "node": names.get(r.node_id, ""),
            "peer": names.get(r.peer_id, "") if r.peer_id else "",
        }
        for r in rows
    ]


async def _history(s: AsyncSession, cvlan_id: int, now: dt.datetime) -> list[dict[str, Any]]:
    since = now - dt.timedelta(seconds=HISTORY_S)
    rows = (
        await s.scalars(
            select(HealthSample)
            .where(HealthSample.cvlan_id == cvlan_id, HealthSample.at >= since)
            .order_by(HealthSample.at, HealthSample.id)
        )
    ).all()
    return [
        {"at": r.at, **{k: getattr(r, k) for k in matrix.STATES}, "median_rtt_ms": r.median_rtt_ms}
        for r in rows
    ]
