"""Queries that belong to no one operation: the key-value table (the UI's session key and sign-outs,
the first-start marker) and the database probe of the health checks."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.db.models import KeyValue


async def ping(s: AsyncSession) -> None:
    """One round trip to the database (raises if it cannot be reached)."""
    await s.execute(select(1))


async def kv_get(s: AsyncSession, key: str) -> str | None:
    row = await s.get(KeyValue, key)
    return row.value if row is not None else None


def kv_put(s: AsyncSession, key: str, value: str) -> None:
    """Store a new key (the commit fails with a conflict if another process stored it first)."""
    s.add(KeyValue(key=key, value=value))


async def kv_with_prefix(s: AsyncSession, prefix: str, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` (key, value) pairs whose key starts with `prefix` (which holds no LIKE wildcard)."""
    rows = await s.execute(
        select(KeyValue.key, KeyValue.value).where(KeyValue.key.like(prefix + "%")).limit(limit)
    )
    return [(k, v) for k, v in rows.all()]


async def kv_delete(s: AsyncSession, keys: list[str]) -> None:
    await s.execute(delete(KeyValue).where(KeyValue.key.in_(keys)))
