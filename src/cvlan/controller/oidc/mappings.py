"""Per tenant: which identity-provider group grants which role, and whether local passwords work."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal, parse_tenant_role
from cvlan.controller.db.models import Membership, OidcGroupRole, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext, where_ref
from cvlan.controller.ops.views import GroupRoleView


def _audited(m: OidcGroupRole) -> dict[str, object]:
    return {"provider": m.provider, "group": m.group_name, "role": m.role}


def mapping_view(m: OidcGroupRole) -> GroupRoleView:
    return {
        "id": m.id,
        "provider": m.provider,
        "group": m.group_name,
        "role": m.role,
        "created_at": m.created_at,
    }


async def add(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    providers: set[str],
    provider: str,
    group: str,
    role: str,
) -> OidcGroupRole:
    """Map a provider's group to a role in the tenant (applied at each member's next sign-in)."""
    who.require(tenant.id, Level.ADMIN, "map an identity-provider group")
    if provider not in providers:
        raise DomainError(
            Kind.INVALID, f"no identity provider named {provider!r} is configured", {"field": "provider"}
        )
    if not group or len(group) > 255 or any(ord(c) < 32 for c in group):
        raise DomainError(Kind.INVALID, "group must be 1-255 printable characters", {"field": "group"})
    r = parse_tenant_role(role)
    found = await s.scalar(
        select(OidcGroupRole).where(
            OidcGroupRole.tenant_id == tenant.id,
            OidcGroupRole.provider == provider,
            OidcGroupRole.group_name == group,
        )
    )
    if found is not None:
        raise DomainError(Kind.CONFLICT, f"group {group!r} of {provider} is mapped already (to {found.role})")
    m = OidcGroupRole(
        tenant_id=tenant.id, provider=provider, group_name=group, role=r.value, created_at=ctx.now()
    )
    s.add(m)
    await s.flush()
    audit.record(s, who, "oidc.map", "oidc_group_role", m.id, tenant_id=tenant.id, after=_audited(m))
    return m


async def list_(s: AsyncSession, who: Principal, tenant: Tenant) -> list[OidcGroupRole]:
    who.require(tenant.id, Level.READ, "list group mappings")
    stmt = select(OidcGroupRole).where(OidcGroupRole.tenant_id == tenant.id).order_by(OidcGroupRole.id)
    return list(await s.scalars(stmt))


async def remove(ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str) -> None:
    """Remove a mapping. Members keep the role until their next sign-in, which takes it away."""
    who.require(tenant.id, Level.ADMIN, "remove a group mapping")
    stmt = where_ref(
        select(OidcGroupRole).where(OidcGroupRole.tenant_id == tenant.id),
        ref,
        OidcGroupRole.id,
        OidcGroupRole.group_name == ref,
    )
    m = await s.scalar(stmt)
    if m is None:
        raise DomainError(Kind.NOT_FOUND, f"group mapping {ref!r} not found")
    audit.record(s, who, "oidc.unmap", "oidc_group_role", m.id, tenant_id=tenant.id, before=_audited(m))
    await s.delete(m)


async def set_local_passwords(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, allowed: bool
) -> None:
    """Allow or forbid password sign-in for the tenant's members (API tokens are not affected)."""
    who.require(tenant.id, Level.ADMIN, "change the sign-in policy")
    before = not tenant.local_passwords_disabled
    if before != allowed:
        tenant.local_passwords_disabled = not allowed
        audit.record(
            s,
            who,
            "tenant.signin_policy",
            "tenant",
            tenant.id,
            tenant_id=tenant.id,
            before={"local_passwords": before},
            after={"local_passwords": allowed},
        )


async def password_blocked_by(s: AsyncSession, user_id: int) -> str | None:
    """The name of a tenant of the user that forbids password sign-in, if any."""
    return await s.scalar(
        select(Tenant.name)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id, Tenant.local_passwords_disabled.is_(True))
        .limit(1)
    )
