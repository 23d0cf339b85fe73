"""Subnet routes and exit nodes: what nodes advertise (from their polls), approval by tenant admins,
auto-approval rules per CVLAN, and the views the API, CLI and UI show (rules: subnetroutes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Cvlan, Node, NodeRoute, Relay, RouteRule, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import nodes as node_ops
from cvlan.controller.ops.context import OpsContext, bump, resolve_cvlan, where_ref
from cvlan.controller.ops.views import RouteRuleAdded, RouteRuleView, RouteView, RuleApproval
from cvlan.controller.subnetroutes import (
    Advertiser,
    Approved,
    AutoRule,
    auto_approved,
    check_rule,
    conflict,
    primary,
    refusal,
)
from cvlan.wire.endpoint import split_hostport
from cvlan.wire.ids import CvlanId
from cvlan.wire.routes import EXIT_ROUTE, RouteError, parse_routes

NODE_ACTOR = "node:{}"


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


async def _rules(s: AsyncSession, cvlan_id: CvlanId) -> list[AutoRule]:
    rows = await s.scalars(select(RouteRule).where(RouteRule.cvlan_id == cvlan_id).order_by(RouteRule.id))
    return [AutoRule(r.kind, r.prefix, r.tag) for r in rows]


def advert_prefixes(routes: Sequence[str], exit_node: bool) -> tuple[str, ...]:
    """What a node advertises as stored rows: its routes, then the exit offer."""
    return (*routes, EXIT_ROUTE) if exit_node else tuple(routes)


async def store_advert(ctx: OpsContext, s: AsyncSession, node_id: int, advert: tuple[str, ...]) -> bool:
    """Record what a node advertises now (its rows not in advert stop being advertised; new ones are
    checked, refused with a reason or approved by a rule). Returns whether anything changed; bumps
    the CVLAN's version when a peer's map changes with it."""
    n = await s.get(Node, node_id)
    if n is None:
        return False
    c = await s.get(Cvlan, n.cvlan_id, with_for_update=True)
    if c is None:
        return False
    rows = {r.prefix: r for r in await s.scalars(select(NodeRoute).where(NodeRoute.node_id == n.id))}
    hosts = await infra_hosts(ctx, s)
    rules = await _rules(s, c.id)
    who = Principal(actor=NODE_ACTOR.format(n.name))
    changed = False
    for prefix in advert:
        row = rows.get(prefix)
        if row is not None and row.advertised:
            continue
        if row is None:
            row = NodeRoute(tenant_id=n.tenant_id, cvlan_id=c.id, node_id=n.id, prefix=prefix)
            row.approved, row.created_at = False, ctx.now()
            s.add(row)
        row.advertised, changed = True, True
        row.refused = refusal(prefix, c.subnet, ctx.settings.pool_cidr, hosts)
        if not row.refused and not row.approved and auto_approved(prefix, list(n.tags or ()), rules):
            row.approved, row.approved_at = True, ctx.now()
            after = {"node": n.name, "route": prefix}
            audit.record(s, who, "route.auto_approve", "node", n.id, tenant_id=n.tenant_id, after=after)
    for prefix, row in rows.items():
        if row.advertised and prefix not in advert:
            row.advertised, changed = False, True
    if changed:
        bump(s, c)  # the node's own view (cvlan node show, its SelfNode routes) changes too
    return changed


def route_state(r: NodeRoute) -> str:
    if r.refused:
        return "refused"
    if not r.advertised:
        return "withdrawn"
    return "approved" if r.approved else "pending"


async def list_routes(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    cvlan_ref: str | None,
    node_ref: str | None,
) -> list[RouteView]:
    """Every route of the tenant's nodes (optionally of one CVLAN or node), with its state and, for
    approved ones, whether its node is the primary of that route."""
    who.require(tenant.id, Level.READ, "list routes")
    stmt = (
        select(NodeRoute, Node, Cvlan.name)
        .join(Node, Node.id == NodeRoute.node_id)
        .join(Cvlan, Cvlan.id == Node.cvlan_id)
        .where(NodeRoute.tenant_id == tenant.id, Node.tenant_id == tenant.id)
    )
    if cvlan_ref:
        c = await resolve_cvlan(s, tenant.id, cvlan_ref)
        stmt = stmt.where(Node.cvlan_id == c.id)
    if node_ref:
        n = await node_ops.resolve(s, tenant.id, node_ref)
        stmt = stmt.where(Node.id == n.id)
    rows = (await s.execute(stmt.order_by(NodeRoute.prefix, Node.id))).all()
    now, off = ctx.now(), ctx.settings.offline_after_s
    groups: dict[tuple[int, str], list[Advertiser]] = {}
    for r, n, _ in rows:
        if route_state(r) == "approved":
            online = node_ops.is_online(n, now, off)
            groups.setdefault((n.cvlan_id, r.prefix), []).append(Advertiser(n.id, online))
    out: list[RouteView] = []
    for r, n, cname in rows:
        state = route_state(r)
        group = groups.get((n.cvlan_id, r.prefix), [])
        out.append(
            {
                "node": n.name,
                "node_id": n.id,
                "cvlan": cname,
                "route": r.prefix,
                "exit_node": r.prefix == EXIT_ROUTE,
                "state": state,
                "approved": r.approved,
                "advertised": r.advertised,
                "reason": r.refused,
                "primary": state == "approved" and primary(group) == n.id,
                "advertisers": len(group),
            }
        )
    return out


async def set_approval(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    node_ref: str,
    routes: list[str],
    exit_node: bool,
    approve: bool,
) -> list[str]:
    """Approve (or revoke the approval of) routes the node advertised; all or nothing. Returns the
    prefixes whose approval changed."""
    who.require(tenant.id, Level.ADMIN, "approve routes" if approve else "revoke routes")
    try:
        wanted = advert_prefixes(parse_routes(routes), exit_node)
    except RouteError as e:
        raise DomainError(Kind.INVALID, str(e), {"field": "routes"}) from None
    if not wanted:
        raise DomainError(Kind.INVALID, "name at least one route, or exit_node", {"field": "routes"})
    n = await node_ops.resolve(s, tenant.id, node_ref, lock=True)
    c = await s.get(Cvlan, n.cvlan_id, with_for_update=True)
    assert c is not None
    rows = {r.prefix: r for r in await s.scalars(select(NodeRoute).where(NodeRoute.node_id == n.id))}
    others = await _approved_in(s, c.id) if approve else []
    todo: list[NodeRoute] = []
    for prefix in wanted:
        what = "the exit node offer" if prefix == EXIT_ROUTE else f"route {prefix}"
        row = rows.get(prefix)
        if row is None:
            raise DomainError(
                Kind.NOT_FOUND, f"node {n.name!r} does not advertise {what}", {"field": "routes"}
            )
        if approve and row.refused:
            raise DomainError(Kind.INVALID, f"{what} of node {n.name!r} is refused: {row.refused}")
        problem = conflict(prefix, n.name, others) if approve else ""
        if problem:
            raise DomainError(Kind.CONFLICT, problem, {"field": "routes"})
        if row.approved != approve:
            todo.append(row)
    for row in todo:
        row.approved, row.approved_at = approve, ctx.now() if approve else None
    if todo:
        bump(s, c)
        action = "route.approve" if approve else "route.revoke"
        after = {"node": n.name, "routes": [r.prefix for r in todo]}
        audit.record(s, who, action, "node", n.id, tenant_id=tenant.id, after=after)
    return [r.prefix for r in todo]


async def _approved_in(s: AsyncSession, cvlan_id: CvlanId) -> list[Approved]:
    rows = await s.execute(
        select(Node.name, NodeRoute.prefix)
        .join(Node, Node.id == NodeRoute.node_id)
        .where(Node.cvlan_id == cvlan_id, NodeRoute.approved.is_(True), NodeRoute.refused == "")
    )
    return [Approved(name, prefix) for name, prefix in rows.all()]


def rule_view(r: RouteRule) -> RouteRuleView:
    return {"id": r.id, "kind": r.kind, "prefix": r.prefix, "tag": r.tag}


async def list_rules(s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str) -> list[RouteRuleView]:
    who.require(tenant.id, Level.READ, "list route rules")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    rows = await s.scalars(select(RouteRule).where(RouteRule.cvlan_id == c.id).order_by(RouteRule.id))
    return [rule_view(r) for r in rows]


async def add_rule(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    cvlan_ref: str,
    rule_in: tuple[str, str, str],
) -> RouteRuleAdded:
    """Add an auto-approval rule; it also approves what matching nodes already advertise."""
    who.require(tenant.id, Level.ADMIN, "add route rule")
    try:
        rule = check_rule(*rule_in)
    except ValueError as e:
        raise DomainError(Kind.INVALID, str(e), {"field": "rule"}) from None
    c = await resolve_cvlan(s, tenant.id, cvlan_ref, lock=True)
    row = RouteRule(tenant_id=tenant.id, cvlan_id=c.id, kind=rule.kind, prefix=rule.prefix, tag=rule.tag)
    row.created_at = ctx.now()
    s.add(row)
    await s.flush()
    others = await _approved_in(s, c.id)
    pending = (
        await s.execute(
            select(NodeRoute, Node)
            .join(Node, Node.id == NodeRoute.node_id)
            .where(Node.cvlan_id == c.id, NodeRoute.approved.is_(False), NodeRoute.refused == "")
        )
    ).all()
    approved: list[RuleApproval] = []
    for r, n in pending:
        if auto_approved(r.prefix, list(n.tags or ()), [rule]) and not conflict(r.prefix, n.name, others):
            r.approved, r.approved_at = True, ctx.now()
            approved.append({"node": n.name, "route": r.prefix})
    if approved:
        bump(s, c)
    after = {**rule_view(row), "approved": approved}
    audit.record(s, who, "route_rule.add", "cvlan", c.id, tenant_id=tenant.id, after=after)
    return {**rule_view(row), "approved": approved}


async def delete_rule(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str, rule_ref: str
) -> None:
    """Delete a rule (routes it approved stay approved)."""
    who.require(tenant.id, Level.ADMIN, "delete route rule")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    stmt = select(RouteRule).where(RouteRule.cvlan_id == c.id)
    stmt = where_ref(stmt, rule_ref, RouteRule.id, RouteRule.id < 0)  # rules have ids, no names
    row = await s.scalar(stmt)
    if row is None:
        raise DomainError(Kind.NOT_FOUND, f"route rule {rule_ref!r} not found")
    audit.record(s, who, "route_rule.delete", "cvlan", c.id, tenant_id=tenant.id, before=rule_view(row))
    await s.delete(row)
