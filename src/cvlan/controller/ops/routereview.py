"""Deciding a node's routes again against what holds now (rules: controller/subnetroutes.py).

A route's refusal depends on its CVLAN (subnet), on the controller's address pool and on the
addresses of the controller and the relays; its approval by rule on the CVLAN's auto-approval rules,
the other nodes' approved routes (overlaps) and the CVLAN's vrouters. All of these change: a node
moves to another CVLAN, a relay is added or deleted. Every path that approves or refuses goes
through here, so an auto-approval checks exactly what a manual approval checks, and a refusal is
never older than the last change that could lift it."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Principal
from cvlan.controller.db.models import Cvlan, Node, NodeRoute, Relay, RouteRule, VrouterCvlan
from cvlan.controller.ops.context import OpsContext, bump
from cvlan.controller.subnetroutes import Approved, AutoRule, approval_problem, auto_approved, refusal
from cvlan.wire.endpoint import split_hostport

RULES_ACTOR = "route-rules"
"""The audit actor of approvals a rule makes when no node or user caused them (a relay deleted)."""


async def infra_hosts(ctx: OpsContext, s: AsyncSession) -> list[str]:
    """The addresses of the controller and of every relay (URL and STUN hosts) given as IP literals."""
    out = [_host(ctx.settings.url)]
    for url, stun in (await s.execute(select(Relay.url, Relay.stun))).all():
        out.append(_host(url))
        if stun:
            try:
                out.append(split_hostport(stun, any_port=True)[0])
            except ValueError:
                pass
    return [h for h in out if h]


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


async def rules_of(s: AsyncSession, cvlan_id: int) -> list[AutoRule]:
    rows = await s.scalars(select(RouteRule).where(RouteRule.cvlan_id == cvlan_id).order_by(RouteRule.id))
    return [AutoRule(r.kind, r.prefix, r.tag) for r in rows]


async def approved_in(s: AsyncSession, cvlan_id: int) -> list[Approved]:
    """The approved, usable routes of the CVLAN's nodes (what a new approval must not overlap)."""
    rows = await s.execute(
        select(Node.name, NodeRoute.prefix)
        .join(Node, Node.id == NodeRoute.node_id)
        .where(Node.cvlan_id == cvlan_id, NodeRoute.approved.is_(True), NodeRoute.refused == "")
    )
    return [Approved(name, prefix) for name, prefix in rows.all()]


async def vrouted(s: AsyncSession, c: Cvlan) -> str:
    """The CVLAN's name when vrouters serve it ("" otherwise): subnetroutes.approval_problem's input."""
    stmt = select(VrouterCvlan.vrouter_id).where(VrouterCvlan.cvlan_id == c.id).limit(1)
    return c.name if await s.scalar(stmt) is not None else ""


def refresh_refusals(c: Cvlan, rows: Sequence[NodeRoute], pool: str, hosts: Sequence[str]) -> bool:
    """Compute every row's refusal again (stored); whether a usable approved route changed with it."""
    seen = False
    for row in rows:
        reason = refusal(row.prefix, c.subnet, pool, hosts)
        if reason != row.refused:
            seen = seen or (row.approved and row.advertised)
            row.refused = reason
    return seen


async def review(
    ctx: OpsContext,
    s: AsyncSession,
    c: Cvlan,
    pairs: Sequence[tuple[NodeRoute, Node]],
    who: Principal,
    hosts: Sequence[str] | None = None,
) -> bool:
    """Refusals of these routes of the CVLAN's nodes computed again, then the CVLAN's rules applied
    to those advertised and pending (skipping any an admin could not approve either). Bumps the
    CVLAN's version when a member's map changes; returns whether it did."""
    if hosts is None:
        hosts = await infra_hosts(ctx, s)
    changed = refresh_refusals(c, [r for r, _ in pairs], ctx.settings.pool_cidr, hosts)
    rules = await rules_of(s, c.id)
    waiting = [(r, n) for r, n in pairs if r.advertised and not r.refused and not r.approved]
    if rules and waiting:
        changed = await _apply_rules(ctx, s, c, waiting, rules, who) or changed
    if changed:
        bump(s, c)
    return changed


async def _apply_rules(
    ctx: OpsContext,
    s: AsyncSession,
    c: Cvlan,
    waiting: Sequence[tuple[NodeRoute, Node]],
    rules: Sequence[AutoRule],
    who: Principal,
) -> bool:
    others, served = await approved_in(s, c.id), await vrouted(s, c)
    done = False
    for row, n in waiting:
        if not auto_approved(row.prefix, list(n.tags or ()), rules):
            continue
        if approval_problem(row.prefix, n.name, others, served):
            continue
        row.approved, row.approved_at, done = True, ctx.now(), True
        others.append(Approved(n.name, row.prefix))
        after = {"node": n.name, "route": row.prefix}
        audit.record(s, who, "route.auto_approve", "node", n.id, tenant_id=n.tenant_id, after=after)
    return done


async def rehome(ctx: OpsContext, s: AsyncSession, n: Node, dst: Cvlan, who: Principal) -> list[str]:
    """A node moved to CVLAN dst: its routes belong to dst now, their approvals (given in the old
    CVLAN) are dropped, and they are decided again under dst's rules. Returns the prefixes whose
    approval was dropped (some may have been approved again by a rule of dst)."""
    await s.execute(select(Cvlan.id).where(Cvlan.id == dst.id).with_for_update())  # as approvals do
    rows = list(
        await s.scalars(select(NodeRoute).where(NodeRoute.node_id == n.id).order_by(NodeRoute.prefix))
    )
    dropped = [r.prefix for r in rows if r.approved]
    for r in rows:
        r.cvlan_id, r.approved, r.approved_at = dst.id, False, None
    await s.flush()
    await review(ctx, s, dst, [(r, n) for r in rows], who)
    return dropped


async def review_everywhere(ctx: OpsContext, s: AsyncSession) -> None:
    """Every CVLAN's routes decided again (the controller's or the relays' addresses changed)."""
    hosts = await infra_hosts(ctx, s)
    rows = (
        await s.execute(
            select(NodeRoute, Node, Cvlan)
            .join(Node, Node.id == NodeRoute.node_id)
            .join(Cvlan, Cvlan.id == Node.cvlan_id)
            .order_by(Cvlan.id, Node.id, NodeRoute.prefix)
            .with_for_update(of=Cvlan)  # as approvals do: none decides against the old addresses
        )
    ).all()
    by_cvlan: dict[int, tuple[Cvlan, list[tuple[NodeRoute, Node]]]] = {}
    for r, n, c in rows:
        by_cvlan.setdefault(c.id, (c, []))[1].append((r, n))
    for c, pairs in by_cvlan.values():
        await review(ctx, s, c, pairs, Principal(actor=RULES_ACTOR), hosts)
