"""Audit records, written in the same transaction as the change they describe."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.auth import Principal
from cvlan.controller.db.models import AuditEntry
from cvlan.wire.ids import TenantId

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def record(
    session: AsyncSession,
    who: Principal,
    action: str,
    target_type: str,
    target_id: object,
    *,
    tenant_id: TenantId | None,
    before: Mapping[str, object] | None = None,
    after: Mapping[str, object] | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Add an audit row to the session; it commits or rolls back with the change itself."""
    session.add(
        AuditEntry(
            tenant_id=tenant_id,
            actor=who.actor,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            before=None if before is None else dict(before),
            after=None if after is None else dict(after),
            request_id=request_id_var.get(),
            created_at=now or dt.datetime.now(dt.UTC),
        )
    )


async def query(
    session: AsyncSession,
    tenant_ids: list[TenantId] | None,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEntry], int]:
    """Entries newest first. tenant_ids None means every tenant and the platform (platform admin)."""
    stmt = select(AuditEntry)
    if tenant_ids is not None:
        stmt = stmt.where(AuditEntry.tenant_id.in_(tenant_ids))
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if since:
        stmt = stmt.where(AuditEntry.created_at >= since)
    if until:
        stmt = stmt.where(AuditEntry.created_at < until)
    total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = await session.scalars(
        stmt.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset)
    )
    return [r for r in rows if isinstance(r, AuditEntry)], total
