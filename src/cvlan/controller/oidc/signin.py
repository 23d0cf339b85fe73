"""What an OpenID Connect sign-in does: the pending sign-in (state, nonce, PKCE verifier), matching
or creating the user, and the tenant roles the provider's groups map to.

A pending sign-in is a database row keyed by the hash of its state and deleted when used, so a
callback replayed with the same state (and so the same nonce) finds nothing. Roles granted by a
group mapping are marked via_oidc: each sign-in sets them to what the groups map to now, and a user
who lost one has every web session and `cvlan login` token ended. Roles given by hand are left
alone. Every sign-in, by password or provider, accepted or refused, gets an audit entry."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit, credentials
from cvlan.controller.auth import ROLE_LEVEL, Principal, Role
from cvlan.controller.db.models import ApiToken, Membership, OidcGroupRole, OidcIdentity, OidcPending, User
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.oidc.client import IdClaims, OidcClient
from cvlan.controller.ops import users
from cvlan.controller.ops.context import OpsContext
from cvlan.wire.ids import TenantId

PENDING_TTL = dt.timedelta(minutes=10)
ANONYMOUS = Principal(actor="anonymous")


def _hash(state: str) -> bytes:
    return hashlib.sha256(state.encode()).digest()


@dataclass(frozen=True)
class Pending:
    """A sign-in under way, as stored."""

    provider: str
    data: dict[str, Any]


def new_state() -> str:
    """A sign-in's state: random, 256 bits."""
    return secrets.token_urlsafe(32)


async def remember(
    ctx: OpsContext, state: str, provider: str, data: dict[str, Any], ttl: dt.timedelta = PENDING_TTL
) -> None:
    """Store a pending sign-in under its state (only the state's hash is kept)."""
    now = ctx.now()
    async with ctx.tx() as s:
        await s.execute(delete(OidcPending).where(OidcPending.expires_at < now))
        s.add(OidcPending(state_hash=_hash(state), provider=provider, data=data, expires_at=now + ttl))


async def peek(ctx: OpsContext, state: str) -> Pending:
    """A pending sign-in that stays stored (a device sign-in polled again)."""
    async with ctx.tx() as s:
        row = await s.get(OidcPending, _hash(state))
        if row is None or row.expires_at <= ctx.now():
            raise DomainError(
                Kind.UNAUTHENTICATED, "this sign-in has expired or was already used; start again"
            )
        return Pending(row.provider, dict(row.data))


async def take(ctx: OpsContext, state: str) -> Pending:
    """Remove and return a pending sign-in; refused if unknown, expired or used already (replay)."""
    async with ctx.tx() as s:
        row = await s.get(OidcPending, _hash(state), with_for_update=True)
        if row is not None:
            await s.delete(row)
    if row is None or row.expires_at <= ctx.now():
        raise DomainError(Kind.UNAUTHENTICATED, "this sign-in has expired or was already used; start again")
    return Pending(row.provider, dict(row.data))


async def record_failure(ctx: OpsContext, method: str, provider: str, who: str, reason: str) -> None:
    """Audit a refused sign-in (nothing else is written)."""
    async with ctx.tx() as s:
        audit.record(
            s,
            ANONYMOUS,
            "user.signin_failed",
            "user",
            who[:100] or "-",
            tenant_id=None,
            after={"method": method, "provider": provider, "reason": reason[:300]},
            now=ctx.now(),
        )


async def _find_user(
    s: AsyncSession, client: OidcClient, claims: IdClaims
) -> tuple[User | None, OidcIdentity | None]:
    ident = await s.scalar(
        select(OidcIdentity).where(
            OidcIdentity.issuer == claims.issuer, OidcIdentity.subject == claims.subject
        )
    )
    if ident is not None:
        return await s.get(User, ident.user_id), ident
    return await s.scalar(select(User).where(User.email == claims.email)), None


async def _wanted_roles(s: AsyncSession, provider: str, groups: tuple[str, ...]) -> dict[TenantId, Role]:
    """Tenant id -> the highest role the groups map to there."""
    if not groups:
        return {}
    rows = await s.execute(
        select(OidcGroupRole.tenant_id, OidcGroupRole.role).where(
            OidcGroupRole.provider == provider, OidcGroupRole.group_name.in_(groups)
        )
    )
    out: dict[TenantId, Role] = {}
    for tid, r in rows.all():
        role = Role(r)
        if tid not in out or ROLE_LEVEL[role] > ROLE_LEVEL[out[tid]]:
            out[tid] = role
    return out


async def _apply_roles(
    ctx: OpsContext, s: AsyncSession, who: Principal, user: User, wanted: dict[TenantId, Role]
) -> bool:
    """Set the user's via_oidc roles to wanted (hand-given roles stay); True if a role was lost."""
    lost = False
    have = {m.tenant_id: m for m in await s.scalars(select(Membership).where(Membership.user_id == user.id))}
    for tid, m in have.items():
        if not m.via_oidc:
            continue
        want = wanted.get(tid)
        if want is None or ROLE_LEVEL[want] < ROLE_LEVEL[Role(m.role)]:
            lost = True
        if want is None:
            audit.record(s, who, "user.role_lost", "user", user.id, tenant_id=tid, before={"role": m.role})
            await s.delete(m)
        elif want.value != m.role:
            audit.record(
                s,
                who,
                "user.role_mapped",
                "user",
                user.id,
                tenant_id=tid,
                before={"role": m.role},
                after={"role": want.value},
            )
            m.role = want.value
    for tid, want in wanted.items():
        if tid not in have:
            s.add(
                Membership(
                    user_id=user.id, tenant_id=tid, role=want.value, via_oidc=True, created_at=ctx.now()
                )
            )
            audit.record(
                s, who, "user.role_mapped", "user", user.id, tenant_id=tid, after={"role": want.value}
            )
    return lost


async def end_sessions(ctx: OpsContext, s: AsyncSession, user: User) -> None:
    """End every web session (new epoch) and `cvlan login` token of the user."""
    user.session_epoch = (user.session_epoch or 0) + 1
    await s.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=ctx.now())
    )


async def complete(ctx: OpsContext, client: OidcClient, claims: IdClaims, method: str) -> User:
    """Sign in the person a verified ID token names: match or create the user, map groups to roles,
    end older sessions if a role was lost, audit. Refused (nothing written) without a verified email."""
    if not claims.email or not claims.email_verified:
        raise client.refused("the provider has not verified this account's email address")
    now = ctx.now()
    async with ctx.tx() as s:
        user, ident = await _find_user(s, client, claims)
        if user is None:
            user = User(email=claims.email, password_hash="", created_at=now)
            s.add(user)
            await s.flush()
        if ident is None:
            ident = OidcIdentity(
                user_id=user.id,
                provider=client.name,
                issuer=claims.issuer,
                subject=claims.subject,
                groups=[],
                created_at=now,
                last_signin_at=now,
            )
            s.add(ident)
        ident.groups, ident.last_signin_at = list(claims.groups), now
        who = Principal(actor=f"user:{user.email}", user_id=user.id)
        lost = await _apply_roles(ctx, s, who, user, await _wanted_roles(s, client.name, claims.groups))
        if lost:
            await end_sessions(ctx, s, user)
        audit.record(
            s,
            who,
            "user.signin",
            "user",
            user.id,
            tenant_id=None,
            now=now,
            after={"method": method, "provider": client.name, "subject": claims.subject, "roles_lost": lost},
        )
    return user


CLI_TOKEN_LIFETIME = dt.timedelta(hours=12)


async def issue_cli_token(ctx: OpsContext, user: User) -> tuple[str, dt.datetime]:
    """A token for `cvlan login`: it acts with the user's roles of the moment (read at each use),
    ends when a later sign-in takes a role away, and expires after CLI_TOKEN_LIFETIME."""
    issued = credentials.issue(users.API_TOKEN_KIND)
    expires = ctx.now() + CLI_TOKEN_LIFETIME
    async with ctx.tx() as s:
        tok = ApiToken(
            tenant_id=None,
            role="user",
            name="cvlan login",
            prefix=issued.prefix,
            secret_hash=issued.digest,
            created_by=f"user:{user.email}",
            created_at=ctx.now(),
            expires_at=expires,
            user_id=user.id,
        )
        s.add(tok)
        await s.flush()
        who = Principal(actor=f"user:{user.email}", user_id=user.id)
        audit.record(
            s,
            who,
            "apitoken.create",
            "api_token",
            tok.id,
            tenant_id=None,
            after={"prefix": tok.prefix, "name": tok.name},
        )
    return issued.text, expires
