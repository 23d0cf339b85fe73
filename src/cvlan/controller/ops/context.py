"""What every operation needs besides the session and the caller."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, false, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import QueryableAttribute

from cvlan.common.clock import Clock, SystemClock
from cvlan.common.numbers import parse_uint
from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import ApiToken, Cvlan, EnrollmentToken, Node, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.proxies import TrustedProxies
from cvlan.controller.settings import ControllerSettings
from cvlan.wire.ids import TenantId

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
"""A whole name (always matched with fullmatch: `$` would also match before a final newline)."""
R = TypeVar("R", bound=Any)
COUNTED = ("tenants", "cvlans", "nodes")
Tx = AsyncSession
"""The transaction an operation runs in (OpsContext.tx). Adapters hand it to `ops` and never query it
themselves; they name its type by this alias, not by the ORM's."""


@dataclass
class OpsContext:
    """Settings, clock and the post-commit hooks that keep in-memory state in step with the DB."""

    settings: ControllerSettings
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock = field(default_factory=SystemClock)
    on_cvlan_changed: list[Callable[[set[int]], None]] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    """How many tenants, CVLANs and nodes exist: counted once at start (count_objects), then kept
    up to date by every committed transaction that adds or removes one (count_change)."""

    def now(self) -> dt.datetime:
        return self.clock.now()

    @functools.cached_property
    def proxies(self) -> TrustedProxies:
        """The TLS fronts whose word about the client is believed (node API and web UI alike)."""
        return TrustedProxies.from_settings(self.settings)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commit on success, roll back on error, then tell listeners what changed.

        A lost database becomes UNAVAILABLE (HTTP 503), so clients retry and the pool recovers."""
        try:
            async with self.sessions() as session, session.begin():
                yield session
                changed: set[int] = session.info.get("changed_cvlans", set())
                counted: dict[str, int] = session.info.get("counted", {})
        except IntegrityError as e:
            raise DomainError(Kind.CONFLICT, "the change conflicts with an existing object") from e
        except (OperationalError, DBAPIError, OSError) as e:
            if isinstance(e, DBAPIError) and not _is_connection_error(e):
                raise
            raise DomainError(Kind.UNAVAILABLE, "database unavailable; retry shortly") from e
        for what, delta in counted.items():
            self.objects[what] += delta
        if changed:
            for hook in self.on_cvlan_changed:
                hook(changed)

    async def count_objects(self) -> None:
        """Count tenants, CVLANs and nodes in the database (once, at start)."""
        async with self.tx() as s:
            for what, model in zip(COUNTED, (Tenant, Cvlan, Node), strict=True):
                self.objects[what] = await s.scalar(select(func.count()).select_from(model)) or 0


def count_change(session: AsyncSession, what: str, delta: int) -> None:
    """Record that this transaction adds (+1) or removes (-1) one of COUNTED; OpsContext.objects
    changes only when the transaction commits."""
    counted: dict[str, int] = session.info.setdefault("counted", {})
    counted[what] = counted.get(what, 0) + delta


def check_name(kind: str, name: str) -> str:
    """A name is 1-63 letters, digits, '.', '_' or '-', starting and ending alphanumeric, not all digits."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.isdigit():
        raise DomainError(
            Kind.INVALID,
            f"{kind} name {name!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit, not only digits",
            {"field": "name"},
        )
    return name


def where_ref(
    stmt: Select[R], ref: str, id_column: QueryableAttribute[int], by_name: ColumnElement[bool]
) -> Select[R]:
    """stmt narrowed to the row a reference names: ASCII digits are an id (up to 2^63-1), anything
    else the name (by_name). A reference holding a NUL character matches nothing (PostgreSQL would
    refuse the query: no text it stores holds one)."""
    if "\x00" in ref:
        return stmt.where(false())
    number = parse_uint(ref)
    return stmt.where(id_column == number) if number is not None else stmt.where(by_name)


async def resolve_tenant(session: AsyncSession, who: Principal, ref: str | int) -> Tenant:
    """The tenant named or numbered ref, if the caller has any role in it; NOT_FOUND otherwise."""
    s = str(ref)
    stmt = where_ref(select(Tenant), s, Tenant.id, Tenant.name == s)
    tenant = await session.scalar(stmt)
    if tenant is None or who.level_in(tenant.id) is None:
        raise DomainError(Kind.NOT_FOUND, f"tenant {s!r} not found")
    return tenant


async def resolve_cvlan(
    session: AsyncSession, tenant_id: TenantId, ref: str | int, *, lock: bool = False
) -> Cvlan:
    s = str(ref)
    stmt = select(Cvlan).where(Cvlan.tenant_id == tenant_id)
    stmt = where_ref(stmt, s, Cvlan.id, Cvlan.name == s)
    cvlan = await session.scalar(stmt.with_for_update() if lock else stmt)
    if cvlan is None:
        raise DomainError(Kind.NOT_FOUND, f"CVLAN {s!r} not found")
    return cvlan


Credential = TypeVar("Credential", EnrollmentToken, ApiToken)


async def revoke_credential(
    ctx: OpsContext,
    s: AsyncSession,
    who: Principal,
    tenant: Tenant,
    model: type[Credential],
    ref: str,
    level: Level,
    what: str,
    action: str,
) -> Credential:
    """Revoke a tenant's token (model: enrollment or API token) by id or prefix, as a caller at level
    may; what names it in messages, action in the audit log. Revoking it again changes nothing."""
    who.require(tenant.id, level, f"revoke {what}")
    stmt = select(model).where(model.tenant_id == tenant.id)
    tok: Credential | None = await s.scalar(where_ref(stmt, ref, model.id, model.prefix == ref))
    if tok is None:
        raise DomainError(Kind.NOT_FOUND, f"{what} {ref!r} not found")
    if tok.revoked_at is None:
        tok.revoked_at = ctx.now()
        target = model.__tablename__.removesuffix("s")
        audit.record(s, who, action, target, tok.id, tenant_id=tenant.id, after={"prefix": tok.prefix})
    return tok


def bump(session: AsyncSession, cvlan: Cvlan) -> None:
    """Mark a change that alters what the CVLAN's members see (same transaction as the change)."""
    cvlan.version = (cvlan.version or 0) + 1
    session.info.setdefault("changed_cvlans", set()).add(cvlan.id)


def _is_connection_error(e: DBAPIError) -> bool:
    return bool(e.connection_invalidated) or isinstance(e, OperationalError)


async def periodically(
    stop: asyncio.Event, every: float, job: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run job every `every` seconds until stop is set (the first run after one period). A refusal
    from the database (DomainError, e.g. it is away) is logged and the next period tries again."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        try:
            await job()
        except DomainError as e:
            log.warning(f"{what} failed; retrying", extra={"reason": e.message})
