"""Management API: the audit log (/api/v1/audit, /api/v1/tenants/{tenant}/audit)."""

from __future__ import annotations

from cvlan.controller import audit
from cvlan.controller.api.common import tenant_route, when
from cvlan.controller.auth import Level
from cvlan.controller.db.models import AuditEntry, Tenant
from cvlan.controller.http.framework import Call, Page, page, route
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import AuditView
from cvlan.wire.ids import TenantId

AUDIT_QUERY = ("actor", "action", "since", "until")


def audit_view(e: AuditEntry) -> AuditView:
    return {
        "id": e.id,
        "tenant_id": e.tenant_id,
        "actor": e.actor,
        "action": e.action,
        "target_type": e.target_type,
        "target_id": e.target_id,
        "before": e.before,
        "after": e.after,
        "request_id": e.request_id,
        "created_at": e.created_at,
    }


async def _audit(c: Call, s: Tx, tenant_ids: list[TenantId] | None) -> Page[AuditView]:
    limit, offset = c.page
    rows, total = await audit.query(
        s,
        tenant_ids,
        actor=c.q("actor"),
        action=c.q("action"),
        since=when("since", c.q("since")),
        until=when("until", c.q("until")),
        limit=limit,
        offset=offset,
    )
    return page([audit_view(e) for e in rows], total, limit, offset)


@tenant_route(
    "GET",
    "/audit",
    summary="The tenant's audit log, newest first",
    tag="audit",
    query=AUDIT_QUERY,
    paginated=True,
)
async def tenant_audit(c: Call, s: Tx, t: Tenant) -> Page[AuditView]:
    c.who.require(t.id, Level.READ, "read audit log")
    return await _audit(c, s, [t.id])


@route(
    "GET",
    "/api/v1/audit",
    summary="Audit log across the caller's tenants (all for a platform admin)",
    tag="audit",
    query=AUDIT_QUERY,
    paginated=True,
)
async def all_audit(c: Call) -> Page[AuditView]:
    async with c.ctx.tx() as s:
        return await _audit(c, s, None if c.who.platform_admin else list(c.who.roles))
