"""Users, their roles in tenants, and API tokens."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit, credentials
from cvlan.controller.auth import Level, Principal, Role, parse_tenant_role
from cvlan.controller.db import queries
from cvlan.controller.db.models import ApiToken, Membership, Tenant, User
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext, revoke_credential, where_ref
from cvlan.controller.ops.views import ApiTokenView, UserView

EMAIL_RE = re.compile(r"[^@\s\x00-\x1f]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,}")
API_TOKEN_KIND = "cvat"
MIN_PASSWORD = 10


def check_email(email: str) -> str:
    if not EMAIL_RE.fullmatch(email or ""):
        raise DomainError(Kind.INVALID, f"email {email!r} is not a valid address", {"field": "email"})
    return email.lower()


def check_password(pw: str) -> str:
    if len(pw) < MIN_PASSWORD:
        raise DomainError(
            Kind.INVALID, f"password must be at least {MIN_PASSWORD} characters", {"field": "password"}
        )
    return pw


def user_view(u: User, role: str | None = None) -> UserView:
    return {
        "id": u.id,
        "email": u.email,
        "role": role,
        "platform_admin": u.is_platform_admin,
        "created_at": u.created_at,
    }


async def create_user(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    email: str,
    role: str,
    password: str | None,
) -> tuple[User, str | None]:
    """Create a user in a tenant (or give an existing user a role there). Returns a generated password
    when none was given: it is shown once."""
    who.require(tenant.id, Level.ADMIN, "create user")
    email = check_email(email)
    r = parse_tenant_role(role)
    shown: str | None = None
    user = await s.scalar(select(User).where(User.email == email))
    if user is None:
        if password is None:
            password = shown = credentials.random_password()
        user = User(
            email=email,
            password_hash=credentials.hash_password(check_password(password)),
            created_at=ctx.now(),
        )
        s.add(user)
        await s.flush()
    elif await s.get(Membership, (user.id, tenant.id)) is not None:
        raise DomainError(
            Kind.CONFLICT, f"user {email} already has a role in this tenant", {"field": "email"}
        )
    s.add(Membership(user_id=user.id, tenant_id=tenant.id, role=r.value, created_at=ctx.now()))
    audit.record(
        s, who, "user.create", "user", user.id, tenant_id=tenant.id, after={"email": email, "role": r.value}
    )
    return user, shown


async def list_users(
    s: AsyncSession, who: Principal, tenant: Tenant, limit: int, offset: int
) -> tuple[list[tuple[User, str]], int]:
    who.require(tenant.id, Level.READ, "list users")
    stmt = select(User, Membership.role).join(Membership).where(Membership.tenant_id == tenant.id)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await s.execute(stmt.order_by(User.id).limit(limit).offset(offset))).all()
    return [(u, r) for u, r in rows], total


async def remove_user(ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str) -> None:
    """Remove a user's role in the tenant; a user left with no role and no platform rights is deleted."""
    who.require(tenant.id, Level.ADMIN, "delete user")
    stmt = select(User).join(Membership).where(Membership.tenant_id == tenant.id)
    stmt = where_ref(stmt, ref, User.id, User.email == ref.lower())
    user = await s.scalar(stmt)
    if user is None:
        raise DomainError(Kind.NOT_FOUND, f"user {ref!r} not found")
    m = await s.get(Membership, (user.id, tenant.id))
    assert m is not None
    audit.record(
        s,
        who,
        "user.delete",
        "user",
        user.id,
        tenant_id=tenant.id,
        before={"email": user.email, "role": m.role},
    )
    await s.delete(m)
    await s.flush()
    others = await s.scalar(select(func.count()).where(Membership.user_id == user.id))
    if not others and not user.is_platform_admin:
        await s.delete(user)


async def create_platform_admin(ctx: OpsContext, s: AsyncSession, email: str, password: str) -> User:
    user = User(
        email=check_email(email),
        password_hash=credentials.hash_password(check_password(password)),
        is_platform_admin=True,
        created_at=ctx.now(),
    )
    s.add(user)
    await s.flush()
    return user


def token_view(t: ApiToken) -> ApiTokenView:
    return {
        "id": t.id,
        "prefix": t.prefix,
        "name": t.name,
        "tenant_id": t.tenant_id,
        "role": t.role,
        "created_by": t.created_by,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
        "last_used_at": t.last_used_at,
    }


async def create_api_token(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant | None,
    role: str,
    name: str = "",
    expires_in: dt.timedelta | None = None,
) -> tuple[ApiToken, str]:
    """Issue an API token scoped to a tenant and role (or a platform token). The secret is shown once."""
    if tenant is None:
        who.require_platform("create platform API token")
        r = Role.PLATFORM_ADMIN
    else:
        who.require(tenant.id, Level.ADMIN, "create API token")
        r = parse_tenant_role(role)
    if len(name) > 200 or any(ord(c) < 32 for c in name):
        raise DomainError(
            Kind.INVALID, "token name must be at most 200 printable characters", {"field": "name"}
        )
    issued = credentials.issue(API_TOKEN_KIND)
    tok = ApiToken(
        tenant_id=tenant.id if tenant else None,
        role=r.value,
        name=name,
        prefix=issued.prefix,
        secret_hash=issued.digest,
        created_by=who.actor,
        created_at=ctx.now(),
        expires_at=ctx.now() + expires_in if expires_in else None,
    )
    s.add(tok)
    await s.flush()
    audit.record(
        s,
        who,
        "apitoken.create",
        "api_token",
        tok.id,
        tenant_id=tok.tenant_id,
        after={"prefix": tok.prefix, "role": tok.role, "name": name},
    )
    return tok, issued.text


async def list_api_tokens(
    s: AsyncSession, who: Principal, tenant: Tenant, limit: int, offset: int
) -> tuple[list[ApiToken], int]:
    who.require(tenant.id, Level.ADMIN, "list API tokens")
    stmt = select(ApiToken).where(ApiToken.tenant_id == tenant.id)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    return list(await s.scalars(stmt.order_by(ApiToken.id).limit(limit).offset(offset))), total


async def revoke_api_token(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str
) -> ApiToken:
    return await revoke_credential(
        ctx, s, who, tenant, ApiToken, ref, Level.ADMIN, "API token", "apitoken.revoke"
    )


async def principal_for_token(ctx: OpsContext, s: AsyncSession, text: str) -> Principal:
    """Authenticate an API token. Every failure gives the same answer, so nothing leaks."""
    bad = DomainError(Kind.UNAUTHENTICATED, "invalid, expired or revoked API token")
    parts = credentials.split(text, API_TOKEN_KIND)
    if parts is None:
        raise bad
    tok = await s.scalar(select(ApiToken).where(ApiToken.prefix == parts[0]))
    if tok is None or not credentials.check_secret(parts[1], tok.secret_hash):
        raise bad
    now = ctx.now()
    if tok.revoked_at is not None or (tok.expires_at is not None and tok.expires_at <= now):
        raise bad
    actor = f"apitoken:{tok.prefix}"
    if tok.user_id is not None:  # a user's own token: the user's roles of the moment
        user = await s.get(User, tok.user_id)
        if user is None:
            raise bad
        p = await principal_for_user(s, user)
        return Principal(
            actor=f"{p.actor} ({actor})", platform_admin=p.platform_admin, roles=p.roles, user_id=p.user_id
        )
    if tok.tenant_id is None:
        return Principal(actor=actor, platform_admin=True)
    return Principal(actor=actor, roles={tok.tenant_id: Role(tok.role)})


FIRST_START_KEY = "bootstrapped"


async def first_start_token(ctx: OpsContext, s: AsyncSession) -> str | None:
    """On the first start with an empty database: a new platform admin API token (the text, shown
    once; it is stored hashed), and the mark that the first start is done. None on any later start."""
    if await queries.kv_get(s, FIRST_START_KEY) or await s.scalar(select(func.count()).select_from(ApiToken)):
        return None
    issued = credentials.issue(API_TOKEN_KIND)
    s.add(
        ApiToken(
            tenant_id=None,
            role="platform_admin",
            name="bootstrap admin",
            prefix=issued.prefix,
            secret_hash=issued.digest,
            created_by="system",
            created_at=ctx.now(),
        )
    )
    queries.kv_put(s, FIRST_START_KEY, ctx.now().isoformat())
    return issued.text


async def get_user(s: AsyncSession, user_id: int, *, lock: bool = False) -> User | None:
    """The user with this id (locked for update: `lock`), or None."""
    return await s.get(User, user_id, with_for_update=lock)


async def by_email(s: AsyncSession, email: str) -> User | None:
    """The user with this email (as check_email normalises it: trimmed, lower case), or None."""
    return await s.scalar(select(User).where(User.email == email.strip().lower()))


async def principal_for_user(s: AsyncSession, user: User) -> Principal:
    rows = (
        await s.execute(select(Membership.tenant_id, Membership.role).where(Membership.user_id == user.id))
    ).all()
    return Principal(
        actor=f"user:{user.email}",
        platform_admin=user.is_platform_admin,
        roles={tid: Role(r) for tid, r in rows},
        user_id=user.id,
    )
