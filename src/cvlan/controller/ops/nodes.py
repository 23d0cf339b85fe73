"""Nodes: creation at registration, listing with status, rename, move, disable/enable, tags, delete,
and the removal of ephemeral nodes gone offline."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit, ipam
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Cvlan, EnrollmentToken, Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import routereview
from cvlan.controller.ops.context import (
    OpsContext,
    bump,
    check_name,
    count_change,
    periodically,
    resolve_cvlan,
    where_ref,
)
from cvlan.controller.ops.cvlans import check_tags
from cvlan.wire.ids import TenantId

log = logging.getLogger(__name__)
SWEEPER = Principal(actor="controller:ephemeral-sweeper")
SWEEP_BATCH = 500


def is_online(n: Node, now: dt.datetime, offline_after_s: int) -> bool:
    return n.last_seen is not None and (now - n.last_seen).total_seconds() < offline_after_s


NO_EXPIRY = dt.timedelta(days=3650)
"""The lifetime of the certificates of a node whose key expiry is disabled."""
MIN_CERT_LIFETIME_S = 3600
MAX_CERT_LIFETIME_S = 365 * 86400


async def cert_lifetime(ctx: OpsContext, s: AsyncSession, n: Node) -> dt.timedelta:
    """The key expiry policy: ten years if disabled for the node, else its tenant's lifetime, else the
    controller's node_cert_lifetime_s."""
    if n.key_expiry_disabled:
        return NO_EXPIRY
    t = await s.get(Tenant, n.tenant_id)
    seconds = t.node_cert_lifetime_s if t is not None and t.node_cert_lifetime_s else None
    return dt.timedelta(seconds=seconds or ctx.settings.node_cert_lifetime_s)


def disabled_error(node_id: int) -> DomainError:
    """What a disabled node's requests get: the agent logs it and keeps asking until enabled."""
    return DomainError(
        Kind.FORBIDDEN,
        f"node {node_id} is disabled by an administrator; it is refused until it is enabled again",
        {"reason": "disabled"},
    )


def view(n: Node, ctx: OpsContext, cvlan_name: str = "") -> dict[str, Any]:
    return {
        "id": n.id,
        "tenant_id": n.tenant_id,
        "cvlan_id": n.cvlan_id,
        "cvlan": cvlan_name,
        "name": n.name,
        "address": n.address,
        "wg_public_key": n.wg_public_key.hex(),
        "tags": n.tags,
        "online": is_online(n, ctx.now(), ctx.settings.offline_after_s),
        "last_seen": n.last_seen,
        "endpoints": n.endpoints,
        "home_relay_region": n.home_relay_region,
        "map_version": n.map_version,
        "cert_not_after": n.cert_not_after,
        "expires_in_s": _expires_in(n, ctx.now()),
        "key_expiry_disabled": n.key_expiry_disabled,
        "disabled": n.disabled,
        "ephemeral": n.ephemeral,
        "health": n.health,
        "created_at": n.created_at,
    }


def _expires_in(n: Node, now: dt.datetime) -> int | None:
    """Seconds until the node's certificate expires (negative: expired); None if never issued."""
    return int((n.cert_not_after - now).total_seconds()) if n.cert_not_after is not None else None


def _audit(n: Node, shown: str = "") -> dict[str, Any]:
    """A node's state as its audit records show it (shown: one more field)."""
    out = {"name": n.name, "cvlan_id": n.cvlan_id, "address": n.address, "tags": n.tags}
    if shown:
        out[shown] = getattr(n, shown)
    return out


async def _unique_name(
    s: AsyncSession, tenant_id: TenantId, wanted: str, also_taken: Collection[str] = ()
) -> str:
    """Hostnames may collide across machines; the second gets -2, the third -3 (headscale-style).
    also_taken: names given in this transaction but not written yet."""
    base = check_name("node", wanted[:55])
    taken = set(
        await s.scalars(select(Node.name).where(Node.tenant_id == tenant_id, Node.name.like(f"{base}%")))
    )
    taken.update(also_taken)
    if base not in taken:
        return base
    for i in range(2, 10_000):
        if f"{base}-{i}" not in taken:
            return f"{base}-{i}"
    raise DomainError(Kind.CONFLICT, f"too many nodes named {base!r}")


@dataclass(frozen=True)
class NewNode:
    """A node to create: the token that enrols it (its use already counted), its key and hostname."""

    token: EnrollmentToken
    wg_public_key: bytes
    hostname: str
    os_info: str = ""
    request_id: str | None = None
    """Of the request that enrols it, for its audit record (None: the current request's)."""


async def create(
    ctx: OpsContext,
    s: AsyncSession,
    token: EnrollmentToken,
    wg_public_key: bytes,
    hostname: str,
    os_info: str = "",
) -> Node:
    """Create a node enrolled by token: a unique name in the tenant, a fresh /32 in the CVLAN."""
    got = (await create_many(ctx, s, [NewNode(token, wg_public_key, hostname, os_info)]))[0]
    if isinstance(got, DomainError):
        raise got
    return got


async def create_many(ctx: OpsContext, s: AsyncSession, todo: list[NewNode]) -> list[Node | DomainError]:
    """create for each new node, in order, with one query per step for all of them: the node, or the
    error that refused it. Every refusal is decided before anything is written for that node."""
    out: list[Node | DomainError | None] = [_bad_key(n.wg_public_key) for n in todo]
    keys = [n.wg_public_key for n in todo]
    known = set(await s.scalars(select(Node.wg_public_key).where(Node.wg_public_key.in_(keys))))
    cvlans = {
        c.id: c
        for c in await s.scalars(
            select(Cvlan)
            .where(Cvlan.id.in_({n.token.cvlan_id for n in todo}))
            .order_by(Cvlan.id)
            .with_for_update()
        )
    }
    for i, n in enumerate(todo):
        if out[i] is None and n.wg_public_key in known:
            out[i] = DomainError(Kind.CONFLICT, "a node with this WireGuard key is already registered")
        elif out[i] is None and n.token.cvlan_id not in cvlans:
            out[i] = DomainError(Kind.NOT_FOUND, "the token's CVLAN no longer exists")
        known.add(n.wg_public_key)
    names = await _unique_names(s, todo, out)
    ok = [i for i, r in enumerate(out) if r is None]
    now = ctx.now()
    addrs = await ipam.allocate_addresses(
        s,
        [(cvlans[todo[i].token.cvlan_id], f"key:{todo[i].wg_public_key.hex()[:16]}") for i in ok],
        dt.timedelta(seconds=ctx.settings.address_quarantine_s),
        now,
        locked=True,
    )
    for i, addr in zip(ok, addrs, strict=True):
        n = todo[i]
        out[i] = (
            addr
            if isinstance(addr, DomainError)
            else Node(
                tenant_id=n.token.tenant_id,
                cvlan_id=n.token.cvlan_id,
                name=names[i],
                wg_public_key=n.wg_public_key,
                address=addr,
                tags=list(n.token.tags or []),
                ephemeral=n.token.ephemeral,
                os_info=n.os_info[:200],
                token_id=n.token.id,
                created_at=now,
                endpoints=[],
                health={},
            )
        )
    made = [(todo[i], r) for i, r in enumerate(out) if isinstance(r, Node)]
    s.add_all([node for _, node in made])
    count_change(s, "nodes", len(made))
    await s.flush()
    for n, node in made:
        bump(s, cvlans[node.cvlan_id])
        rid = audit.request_id_var.set(n.request_id) if n.request_id is not None else None
        audit.record(
            s,
            Principal(actor=f"node:{node.name}"),
            "node.register",
            "node",
            node.id,
            tenant_id=node.tenant_id,
            after={**_audit(node), "token": n.token.prefix},
        )
        if rid is not None:
            audit.request_id_var.reset(rid)
    return [r for r in out if r is not None]  # every entry is set by now


def _bad_key(key: bytes) -> DomainError | None:
    if len(key) != 32:
        return DomainError(Kind.INVALID, "WireGuard public key must be 32 bytes", {"field": "wg_public_key"})
    return None


async def _unique_names(
    s: AsyncSession, todo: list[NewNode], out: list[Node | DomainError | None]
) -> dict[int, str]:
    """A unique name in its tenant for each node still to create (by index); a refusal goes to out.

    One exact lookup of all the wanted names; only a name already taken (in the database or earlier
    in this batch) needs _unique_name's search for a free suffix."""
    bases: dict[int, str] = {}
    for i, n in enumerate(todo):
        if out[i] is None:
            try:
                bases[i] = check_name("node", n.hostname[:55])
            except DomainError as e:
                out[i] = e
    taken = set(
        (
            await s.execute(
                select(Node.tenant_id, Node.name).where(
                    Node.tenant_id.in_({todo[i].token.tenant_id for i in bases}),
                    Node.name.in_(set(bases.values())),
                )
            )
        ).all()
    )
    given: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    for i, base in bases.items():
        tenant = todo[i].token.tenant_id
        mine = given.setdefault(tenant, set())
        if (tenant, base) in taken or base in mine:
            try:
                names[i] = await _unique_name(s, tenant, base, mine)
            except DomainError as e:
                out[i] = e
                continue
        else:
            names[i] = base
        mine.add(names[i])
    return names


async def resolve(s: AsyncSession, tenant_id: TenantId, ref: str, *, lock: bool = False) -> Node:
    stmt = select(Node).where(Node.tenant_id == tenant_id)
    stmt = where_ref(stmt, ref, Node.id, Node.name == ref)
    n = await s.scalar(stmt.with_for_update() if lock else stmt)
    if n is None:
        raise DomainError(Kind.NOT_FOUND, f"node {ref!r} not found")
    return n


async def by_ids(s: AsyncSession, ids: Collection[int]) -> dict[int, Node]:
    """The nodes with these ids that exist, by id."""
    if not ids:
        return {}
    return {n.id: n for n in await s.scalars(select(Node).where(Node.id.in_(ids)))}


async def list_(
    s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str | None, limit: int, offset: int
) -> tuple[list[tuple[Node, str]], int]:
    who.require(tenant.id, Level.READ, "list nodes")
    stmt = select(Node, Cvlan.name).join(Cvlan, Cvlan.id == Node.cvlan_id).where(Node.tenant_id == tenant.id)
    if cvlan_ref:
        c = await resolve_cvlan(s, tenant.id, cvlan_ref)
        stmt = stmt.where(Node.cvlan_id == c.id)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await s.execute(stmt.order_by(Node.id).limit(limit).offset(offset))).all()
    return [(n, c) for n, c in rows], total


async def list_visible(
    s: AsyncSession, who: Principal, limit: int, offset: int
) -> tuple[list[tuple[Node, str]], int]:
    stmt = select(Node, Cvlan.name).join(Cvlan, Cvlan.id == Node.cvlan_id)
    if not who.platform_admin:
        stmt = stmt.where(Node.tenant_id.in_(list(who.roles)))
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await s.execute(stmt.order_by(Node.id).limit(limit).offset(offset))).all()
    return [(n, c) for n, c in rows], total


async def get(s: AsyncSession, who: Principal, tenant: Tenant, ref: str) -> tuple[Node, str]:
    who.require(tenant.id, Level.READ, "show node")
    n = await resolve(s, tenant.id, ref)
    cname = await s.scalar(select(Cvlan.name).where(Cvlan.id == n.cvlan_id)) or ""
    return n, cname


async def _change(
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    ref: str,
    change: Callable[[Node], Awaitable[bool]],
    *,
    level: Level,
    what: str,
    action: str,
    shown: str = "",
    new_map: bool = True,
) -> Node:
    """What every change of one node goes through: the caller's permission (what), the node locked,
    its state before, the change itself (False: nothing to change, nothing recorded), a new map
    version for the node's CVLAN (new_map: its peers see the change), and the audit record (action;
    shown: a field recorded besides the usual ones)."""
    who.require(tenant.id, level, what)
    n = await resolve(s, tenant.id, ref, lock=True)
    before = _audit(n, shown)
    if not await change(n):
        return n
    if new_map:
        bump(s, await _cvlan_of(s, n))
    audit.record(s, who, action, "node", n.id, tenant_id=tenant.id, before=before, after=_audit(n, shown))
    return n


def _setting(field: str, value: object) -> Callable[[Node], Awaitable[bool]]:
    """The change that sets one field of a node (nothing to change when it holds the value already)."""

    async def change(n: Node) -> bool:
        if getattr(n, field) == value:
            return False
        setattr(n, field, value)
        return True

    return change


async def _cvlan_of(s: AsyncSession, n: Node) -> Cvlan:
    cvlan = await s.get(Cvlan, n.cvlan_id)
    assert cvlan is not None  # a node's CVLAN cannot be deleted while it has nodes
    return cvlan


async def rename(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str, name: str
) -> Node:
    async def change(n: Node) -> bool:
        check_name("node", name)
        if name != n.name and await s.scalar(
            select(Node.id).where(Node.tenant_id == tenant.id, Node.name == name)
        ):
            raise DomainError(
                Kind.CONFLICT, f"a node named {name!r} already exists in this tenant", {"field": "name"}
            )
        n.name = name
        return True

    return await _change(
        s, who, tenant, ref, change, level=Level.OPERATE, what="rename node", action="node.rename"
    )


async def move(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str, cvlan_ref: str
) -> Node:
    """Move a node to another CVLAN of the same tenant: its old address is released, a new one
    allocated; the approvals of its routes and exit offer are dropped and decided again under the
    new CVLAN's rules (routereview.rehome)."""

    async def change(n: Node) -> bool:
        dst = await resolve_cvlan(s, tenant.id, cvlan_ref)
        if dst.id == n.cvlan_id:
            return False
        src = await _cvlan_of(s, n)
        now = ctx.now()
        await ipam.release_address(s, src.id, n.address, now)
        n.address = await ipam.allocate_address(
            s, dst, f"node:{n.id}", dt.timedelta(seconds=ctx.settings.address_quarantine_s), now
        )
        n.cvlan_id = dst.id
        bump(s, src)  # the new CVLAN's version is bumped as for every change
        await routereview.rehome(ctx, s, n, dst, who)
        return True

    return await _change(
        s, who, tenant, ref, change, level=Level.OPERATE, what="move node", action="node.move"
    )


async def set_disabled(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str, disabled: bool
) -> Node:
    """Disable a node (refused from its next request, dropped from its peers' maps at once) or
    enable it again with the same id, address, name and keys. Setting the current state is a no-op."""
    return await _change(
        s,
        who,
        tenant,
        ref,
        _setting("disabled", disabled),
        level=Level.OPERATE,
        what="disable node" if disabled else "enable node",
        action="node.disable" if disabled else "node.enable",
        shown="disabled",
    )


async def set_tags(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str, tags: list[str]
) -> Node:
    """Replace a node's tags; its CVLAN's policy is compiled again for the new tags at once."""

    async def change(n: Node) -> bool:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DomainError(Kind.INVALID, "tags must be a list of strings", {"field": "tags"})
        wanted = check_tags(tags)
        if sorted(n.tags or []) == wanted:
            return False
        n.tags = wanted
        return True

    return await _change(
        s, who, tenant, ref, change, level=Level.ADMIN, what="change node tags", action="node.tags"
    )


async def set_key_expiry(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str, disabled: bool
) -> Node:
    """Disable key expiry for a node (servers: its next certificate lasts ten years) or enable it
    again (its next certificate gets the tenant's lifetime). Disabling or deleting it still works at once."""
    return await _change(
        s,
        who,
        tenant,
        ref,
        _setting("key_expiry_disabled", disabled),
        level=Level.ADMIN,
        what="change node key expiry",
        action="node.key_expiry",
        shown="key_expiry_disabled",
        new_map=False,
    )


async def delete(ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str) -> Node:
    """Delete a node: its certificate is refused from the next request, its address quarantined."""
    who.require(tenant.id, Level.OPERATE, "delete node")
    n = await resolve(s, tenant.id, ref, lock=True)
    await _remove(ctx, s, who, n, "node.delete")
    return n


async def _remove(
    ctx: OpsContext, s: AsyncSession, who: Principal, n: Node, action: str, why: str | None = None
) -> None:
    cvlan = await s.get(Cvlan, n.cvlan_id)
    assert cvlan is not None
    await ipam.release_address(s, cvlan.id, n.address, ctx.now())
    bump(s, cvlan)
    after = {"reason": why} if why else None
    audit.record(s, who, action, "node", n.id, tenant_id=n.tenant_id, before=_audit(n), after=after)
    await s.delete(n)
    count_change(s, "nodes", -1)


async def sweep_ephemeral(ctx: OpsContext, s: AsyncSession) -> list[Node]:
    """Remove the ephemeral nodes offline for longer than ephemeral_offline_s (a node that never
    polled: since it enrolled), like a delete: address quarantined, peers' maps updated, audited."""
    limit = ctx.settings.ephemeral_offline_s
    cutoff = ctx.now() - dt.timedelta(seconds=limit)
    offline = or_(Node.last_seen < cutoff, and_(Node.last_seen.is_(None), Node.created_at < cutoff))
    stmt = select(Node).where(Node.ephemeral.is_(True), offline).order_by(Node.id).limit(SWEEP_BATCH)
    gone = list(await s.scalars(stmt.with_for_update()))
    for n in gone:
        await _remove(
            ctx, s, SWEEPER, n, "node.ephemeral_remove", f"ephemeral node offline for over {limit}s"
        )
    return gone


async def run_ephemeral_sweeper(ctx: OpsContext, stop: asyncio.Event) -> None:
    """Sweep ephemeral nodes every quarter of ephemeral_offline_s (at most every minute) until stop."""

    async def once() -> None:
        async with ctx.tx() as s:
            gone = await sweep_ephemeral(ctx, s)
        for n in gone:
            log.info(
                f"ephemeral node {n.name} removed after being offline",
                extra={"node_id": n.id, "tenant_id": n.tenant_id},
            )

    await periodically(stop, min(60.0, ctx.settings.ephemeral_offline_s / 4), once, "ephemeral node sweep")
