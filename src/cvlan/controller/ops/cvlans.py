"""CVLANs and their enrollment tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit, credentials, ipam
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Cvlan, EnrollmentToken, Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import (
    OpsContext,
    bump,
    check_name,
    count_change,
    resolve_cvlan,
    revoke_credential,
)
from cvlan.controller.ops.views import CvlanView, EnrollmentTokenView

MODES = ("mesh", "hub")
ENROLL_KIND = "cvet"
MAX_TAGS = 32


def view(c: Cvlan, nodes: int | None = None) -> CvlanView:
    out: CvlanView = {
        "id": c.id,
        "tenant_id": c.tenant_id,
        "name": c.name,
        "subnet": c.subnet,
        "mode": c.mode,
        "version": c.version,
        "created_at": c.created_at,
    }
    if nodes is not None:
        out["nodes"] = nodes
    return out


def join_command(url: str, ca_pin: str, token: str) -> str:
    """The agent's own first-start command (a development checkout; the token is on its argv)."""
    return f"cvlan-ctrl --server {url} --token {token} --ca-pin {ca_pin}"


def join_steps(url: str, ca_pin: str) -> list[str]:
    """What to run, as root, on a fresh machine to put it on a CVLAN: install the node package, then
    join with the token from stdin or a root-only file (never on the command line). The API and the
    web UI show these same lines."""
    join = f"cvlan-ctrl join --server {url} --ca-pin {ca_pin}"
    return [
        "# 1. Install the node package (Debian 12; see docs/PACKAGING.md):",
        "apt-get install ./cvlan-client_*.deb",
        "# 2. Join; paste the token when asked (it stays out of ps and shell history):",
        f"{join} --token -",
        "#    or, with the token in a root-only file:",
        f"{join} --token-file /root/cvlan.token",
    ]


def _audit(c: Cvlan) -> dict[str, Any]:
    return {"name": c.name, "subnet": c.subnet, "mode": c.mode}


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise DomainError(Kind.INVALID, f"mode {mode!r}: expected mesh or hub", {"field": "mode"})
    return mode


async def create(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, name: str, subnet: str | None, mode: str
) -> Cvlan:
    who.require(tenant.id, Level.OPERATE, "create CVLAN")
    check_name("CVLAN", name)
    _mode(mode)
    if await s.scalar(select(Cvlan.id).where(Cvlan.tenant_id == tenant.id, Cvlan.name == name)):
        raise DomainError(
            Kind.CONFLICT, f"a CVLAN named {name!r} already exists in this tenant", {"field": "name"}
        )
    net = await ipam.allocate_subnet(s, ctx.settings.pool_cidr, ctx.settings.cvlan_prefix, subnet)
    c = Cvlan(
        tenant_id=tenant.id,
        name=name,
        subnet=str(net),
        net_start=int(net.network_address),
        net_end=int(net.broadcast_address),
        mode=mode,
        version=1,
        created_at=ctx.now(),
    )
    s.add(c)
    await s.flush()
    count_change(s, "cvlans", 1)
    audit.record(s, who, "cvlan.create", "cvlan", c.id, tenant_id=tenant.id, after=_audit(c))
    return c


async def list_(
    s: AsyncSession, who: Principal, tenant: Tenant, limit: int, offset: int
) -> tuple[list[tuple[Cvlan, int]], int]:
    who.require(tenant.id, Level.READ, "list CVLANs")
    stmt = select(Cvlan).where(Cvlan.tenant_id == tenant.id)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    cvlans = list(await s.scalars(stmt.order_by(Cvlan.id).limit(limit).offset(offset)))
    counts = dict(
        (
            await s.execute(
                select(Node.cvlan_id, func.count())
                .where(Node.cvlan_id.in_([c.id for c in cvlans]))
                .group_by(Node.cvlan_id)
            )
        ).all()
    )
    return [(c, counts.get(c.id, 0)) for c in cvlans], total


async def get(s: AsyncSession, who: Principal, tenant: Tenant, ref: str) -> Cvlan:
    who.require(tenant.id, Level.READ, "show CVLAN")
    return await resolve_cvlan(s, tenant.id, ref)


async def update(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    ref: str,
    name: str | None = None,
    mode: str | None = None,
) -> Cvlan:
    who.require(tenant.id, Level.OPERATE, "update CVLAN")
    c = await resolve_cvlan(s, tenant.id, ref, lock=True)
    before = _audit(c)
    if name is not None and name != c.name:
        check_name("CVLAN", name)
        if await s.scalar(select(Cvlan.id).where(Cvlan.tenant_id == tenant.id, Cvlan.name == name)):
            raise DomainError(Kind.CONFLICT, f"a CVLAN named {name!r} already exists", {"field": "name"})
        c.name = name
    if mode is not None and mode != c.mode:
        c.mode = _mode(mode)
        bump(s, c)
    audit.record(s, who, "cvlan.update", "cvlan", c.id, tenant_id=tenant.id, before=before, after=_audit(c))
    return c


async def delete(ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str) -> None:
    who.require(tenant.id, Level.OPERATE, "delete CVLAN")
    c = await resolve_cvlan(s, tenant.id, ref, lock=True)
    n = await s.scalar(select(func.count()).where(Node.cvlan_id == c.id)) or 0
    if n:
        raise DomainError(
            Kind.PRECONDITION, f"CVLAN {c.name!r} still has {n} nodes; delete or move them first"
        )
    audit.record(s, who, "cvlan.delete", "cvlan", c.id, tenant_id=tenant.id, before=_audit(c))
    bump(s, c)
    await s.delete(c)
    count_change(s, "cvlans", -1)


# --- enrollment tokens ------------------------------------------------------------------


def token_view(t: EnrollmentToken, cvlan_name: str = "") -> EnrollmentTokenView:
    return {
        "id": t.id,
        "prefix": t.prefix,
        "cvlan_id": t.cvlan_id,
        "cvlan": cvlan_name,
        "reusable": t.reusable,
        "max_uses": t.max_uses,
        "uses": t.uses,
        "tags": t.tags,
        "ephemeral": t.ephemeral,
        "created_by": t.created_by,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
    }


def check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise DomainError(Kind.INVALID, f"at most {MAX_TAGS} tags", {"field": "tags"})
    for t in tags:
        # "region:NAME" places the node in a vrouter region (controller/vrouting.py); one at most.
        check_name("tag", t.removeprefix("tag:").removeprefix("region:"))
    if len({t for t in tags if t.startswith("region:")}) > 1:
        raise DomainError(Kind.INVALID, "at most one region: tag", {"field": "tags"})
    return sorted(set(tags))


MAX_TOKEN_USES = 1_000_000
"""The most registrations one enrollment token may allow."""


async def create_token(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    cvlan_ref: str,
    *,
    reusable: bool,
    max_uses: int | None,
    expires_in: dt.timedelta | None,
    tags: list[str],
    ephemeral: bool = False,
) -> tuple[EnrollmentToken, Cvlan, str]:
    """Issue an enrollment token for a CVLAN; the secret text is returned once and stored hashed."""
    who.require(tenant.id, Level.OPERATE, "create enrollment token")
    c = await resolve_cvlan(s, tenant.id, cvlan_ref)
    if max_uses is not None and not 1 <= max_uses <= MAX_TOKEN_USES:
        raise DomainError(Kind.INVALID, f"uses must be 1-{MAX_TOKEN_USES:,}", {"field": "max_uses"})
    if max_uses is not None and max_uses > 1:
        reusable = True
    issued = credentials.issue(ENROLL_KIND)
    t = EnrollmentToken(
        tenant_id=tenant.id,
        cvlan_id=c.id,
        prefix=issued.prefix,
        secret_hash=issued.digest,
        reusable=reusable,
        max_uses=max_uses if reusable else 1,
        uses=0,
        tags=check_tags(tags),
        ephemeral=ephemeral,
        created_by=who.actor,
        created_at=ctx.now(),
        expires_at=ctx.now() + (expires_in or dt.timedelta(days=1)),
    )
    s.add(t)
    await s.flush()
    audit.record(
        s,
        who,
        "token.create",
        "enrollment_token",
        t.id,
        tenant_id=tenant.id,
        after={
            "prefix": t.prefix,
            "cvlan": c.name,
            "reusable": t.reusable,
            "max_uses": t.max_uses,
            "tags": t.tags,
            "ephemeral": t.ephemeral,
        },
    )
    return t, c, issued.text


async def list_tokens(
    s: AsyncSession, who: Principal, tenant: Tenant, cvlan_ref: str | None, limit: int, offset: int
) -> tuple[list[tuple[EnrollmentToken, str]], int]:
    who.require(tenant.id, Level.READ, "list enrollment tokens")
    stmt = select(EnrollmentToken, Cvlan.name).join(Cvlan).where(EnrollmentToken.tenant_id == tenant.id)
    if cvlan_ref:
        c = await resolve_cvlan(s, tenant.id, cvlan_ref)
        stmt = stmt.where(EnrollmentToken.cvlan_id == c.id)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await s.execute(stmt.order_by(EnrollmentToken.id).limit(limit).offset(offset))).all()
    return [(t, n) for t, n in rows], total


async def revoke_token(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str
) -> EnrollmentToken:
    return await revoke_credential(
        ctx, s, who, tenant, EnrollmentToken, ref, Level.OPERATE, "enrollment token", "token.revoke"
    )


async def consume_token(ctx: OpsContext, s: AsyncSession, text: str) -> EnrollmentToken:
    """Check an enrollment token and count one use, atomically (see consume_tokens)."""
    got = (await consume_tokens(ctx, s, [text]))[0]
    if isinstance(got, DomainError):
        raise got
    return got


async def consume_tokens(
    ctx: OpsContext, s: AsyncSession, texts: list[str]
) -> list[EnrollmentToken | DomainError]:
    """Check each enrollment token and count one use of it: the token, or why it is refused.

    Atomic: the token rows are read FOR UPDATE (on SQLite the transaction holds the write lock), so
    two registrations racing for a single-use token have exactly one winner. A token named several
    times is counted once per use, in order, up to its limit. The counts are written with the
    transaction; a caller that then refuses a node gives its use back with release_token."""
    bad = DomainError(Kind.UNAUTHENTICATED, "enrollment token is not valid")
    parts = [credentials.split(t, ENROLL_KIND) for t in texts]
    prefixes = {p[0] for p in parts if p is not None}
    rows = await s.scalars(
        select(EnrollmentToken)
        .where(EnrollmentToken.prefix.in_(prefixes))
        .order_by(EnrollmentToken.id)
        .with_for_update()
    )
    found = {t.prefix: t for t in rows}
    now = ctx.now()
    out: list[EnrollmentToken | DomainError] = []
    for p in parts:
        t = found.get(p[0]) if p is not None else None
        if p is None or t is None or not credentials.check_secret(p[1], t.secret_hash):
            out.append(bad)
        elif t.revoked_at is not None:
            out.append(DomainError(Kind.UNAUTHENTICATED, "enrollment token has been revoked"))
        elif t.expires_at is not None and t.expires_at <= now:
            out.append(DomainError(Kind.UNAUTHENTICATED, "enrollment token has expired"))
        elif t.max_uses is not None and t.uses >= t.max_uses:
            out.append(DomainError(Kind.UNAUTHENTICATED, "enrollment token has no uses left"))
        else:
            t.uses += 1
            out.append(t)
    return out


def release_token(token: EnrollmentToken) -> None:
    """Give back a use counted by consume_tokens in this transaction (the node was refused)."""
    token.uses -= 1
