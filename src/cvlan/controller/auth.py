"""Who is calling, and what they may do in which tenant."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from cvlan.controller.errors import DomainError, Kind
from cvlan.wire.ids import TenantId


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Level(IntEnum):
    """What an action needs. Roles map onto levels; a higher level includes the lower ones."""

    READ = 1
    OPERATE = 2
    ADMIN = 3
    PLATFORM = 4


ROLE_LEVEL = {Role.AUDITOR: Level.READ, Role.OPERATOR: Level.OPERATE, Role.ADMIN: Level.ADMIN}
TENANT_ROLES = (Role.ADMIN, Role.OPERATOR, Role.AUDITOR)


def parse_tenant_role(text: str) -> Role:
    try:
        role = Role(text)
    except ValueError:
        role = None
    if role not in TENANT_ROLES:
        raise DomainError(Kind.INVALID, f"role {text!r}: expected one of admin, operator, auditor")
    assert role is not None
    return role


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (by session or password) or an API token."""

    actor: str
    platform_admin: bool = False
    roles: dict[TenantId, Role] = field(default_factory=dict)
    user_id: int | None = None

    def level_in(self, tenant_id: TenantId) -> Level | None:
        if self.platform_admin:
            return Level.PLATFORM
        role = self.roles.get(tenant_id)
        return ROLE_LEVEL[role] if role else None

    def require(self, tenant_id: TenantId, need: Level, what: str) -> None:
        """Raise NOT_FOUND if the caller has no role in the tenant (no existence leak), else FORBIDDEN."""
        have = self.level_in(tenant_id)
        if have is None:
            raise DomainError(Kind.NOT_FOUND, "tenant not found")
        if have < need:
            raise DomainError(Kind.FORBIDDEN, f"{what}: your role in this tenant does not allow it")

    def require_platform(self, what: str) -> None:
        if not self.platform_admin:
            raise DomainError(Kind.FORBIDDEN, f"{what}: only a platform admin may do this")

    def can(self, tenant_id: TenantId, need: Level) -> bool:
        have = self.level_in(tenant_id)
        return have is not None and have >= need


SYSTEM = Principal(actor="system", platform_admin=True)
