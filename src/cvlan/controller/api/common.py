"""What the management API's resource modules share: the tenant-scoped route group, the answers of
the platform's daemons (relays, vrouters) and the parsing of durations and times in bodies and
queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cvlan.common.durations import parse_duration
from cvlan.controller.db.models import Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CA_PIN_KEY, Call, Handler, Page, page, route
from cvlan.controller.ops import infra
from cvlan.controller.ops.context import Tx, resolve_tenant
from cvlan.controller.ops.views import DaemonCreated

T = "/api/v1/tenants/{tenant}"
"""The prefix of every tenant-scoped route."""

TenantHandler = Callable[[Call, Tx, Tenant], Awaitable[Any]]
"""A tenant-scoped handler: the call, its transaction, and the tenant named in the path, resolved and
visible to the caller (else the request was refused before the handler ran)."""


def tenant_route(method: str, sub: str, **kw: Any) -> Callable[[TenantHandler], TenantHandler]:
    """Declare a route under /api/v1/tenants/{tenant}: the handler runs inside one transaction, with
    the tenant the path names resolved for the caller (unknown or invisible: 404, as everywhere)."""

    def deco(fn: TenantHandler) -> TenantHandler:
        async def scoped(c: Call) -> Any:
            async with c.ctx.tx() as s:
                t = await resolve_tenant(s, c.who, c.params["tenant"])
                return await fn(c, s, t)

        scoped.__name__ = fn.__name__  # the route's name and the OpenAPI operationId
        scoped.__doc__ = fn.__doc__
        handler: Handler = scoped
        route(method, T + sub, **kw)(handler)
        return fn

    return deco


X = TypeVar("X")
V = TypeVar("V")


def daemon_created(c: Call, program: str, token: str) -> DaemonCreated:
    """What registering a relay or vrouter answers besides its view: the bootstrap token (shown once)
    and the command that starts the daemon (program) with it."""
    cmd = infra.start_command(program, c.ctx.settings.url, token, c.request.app[CA_PIN_KEY])
    return {"token": token, "command": cmd}


async def daemon_page(
    c: Call,
    rows: Callable[[Tx, int, int], Awaitable[tuple[list[tuple[X, str]], int]]],
    view: Callable[[X, str], V],
) -> Page[V]:
    """A page of relays or vrouters: rows lists them with their region's name, view shows one."""
    limit, offset = c.page
    async with c.ctx.tx() as s:
        found, total = await rows(s, limit, offset)
    return page([view(x, region) for x, region in found], total, limit, offset)


def duration(field: str, text: str | None) -> dt.timedelta | None:
    """A duration such as 24h or 7d given in field, or None if it was not given."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise DomainError(Kind.INVALID, f"{field}: {e}", {"field": field}) from e


def when(field: str, v: str | None) -> dt.datetime | None:
    """A point in time given in field as an ISO time or as a duration back from now."""
    if v is None:
        return None
    try:
        return dt.datetime.now(dt.UTC) - parse_duration(v)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as e:
        raise DomainError(
            Kind.INVALID, f"{field} {v!r}: expected an ISO time or a duration such as 24h"
        ) from e
