"""IP address management: CVLAN subnets from a global pool, node /32s inside a CVLAN.

Allocation is transactional. On PostgreSQL the CVLAN row (addresses) or an advisory lock
(subnets) serialises concurrent allocators; on SQLite every write transaction already holds the
database write lock (BEGIN IMMEDIATE). A unique constraint on (cvlan_id, address) backs both up.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.db.models import Cvlan, IpAllocation
from cvlan.controller.errors import DomainError, Kind
from cvlan.wire.dnsnames import RESOLVER_ADDRESS
from cvlan.wire.ids import CvlanId

SUBNET_LOCK_KEY = 0x6376_6C61  # advisory lock id for subnet allocation ("cvla")
_RESERVED = int(ipaddress.IPv4Address(RESOLVER_ADDRESS))
"""No CVLAN subnet holds the nodes' resolver address (wire/dnsnames.py), so it is never a node's."""


def parse_subnet(text_: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text_.strip(), strict=True)
    except ValueError as e:
        raise DomainError(Kind.INVALID, f"subnet {text_!r}: {e}") from e
    if not isinstance(net, ipaddress.IPv4Network):
        raise DomainError(Kind.INVALID, f"subnet {text_!r}: only IPv4 subnets are supported")
    if net.prefixlen > 30:
        raise DomainError(Kind.INVALID, f"subnet {text_!r}: must be /30 or larger to hold nodes")
    return net


async def _lock_subnets(session: AsyncSession) -> None:
    if _dialect(session) == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SUBNET_LOCK_KEY})


async def _overlapping(session: AsyncSession, start: int, end: int) -> Cvlan | None:
    """The CVLAN overlapping [start, end], if any, in one index probe.

    CVLAN subnets never overlap each other, so the only candidate is the CVLAN with the greatest
    net_start <= end: any other overlapping one would have to start inside it."""
    c = await session.scalar(
        select(Cvlan).where(Cvlan.net_start <= end).order_by(Cvlan.net_start.desc()).limit(1)
    )
    return c if c is not None and c.net_end >= start else None


def _skip_reserved(cand: int, size: int) -> int:
    """cand, or the next aligned block if the block at cand holds the resolver address."""
    return cand + size if cand <= _RESERVED < cand + size else cand


async def allocate_subnet(
    session: AsyncSession, pool: str, prefix: int, requested: str | None
) -> ipaddress.IPv4Network:
    """Return a subnet no other CVLAN overlaps: the requested one, or the first free one in the pool."""
    await _lock_subnets(session)
    if requested:
        net = parse_subnet(requested)
        start, end = int(net.network_address), int(net.broadcast_address)
        if start <= _RESERVED <= end:
            raise DomainError(
                Kind.INVALID,
                f"subnet {net} contains {RESOLVER_ADDRESS}, the address of every node's DNS resolver",
                {"field": "subnet"},
            )
        clash = await _overlapping(session, start, end)
        if clash is not None:
            raise DomainError(
                Kind.CONFLICT, f"subnet {net} overlaps the subnet {clash.subnet} of another CVLAN"
            )
        return net
    pool_net = ipaddress.IPv4Network(pool)
    size = 1 << (32 - prefix)
    p_start, p_end = int(pool_net.network_address), int(pool_net.broadcast_address)
    # Fast path: right after the highest subnet in the pool (the common, append-only case); one
    # index probe, because the highest start also has the highest end among disjoint subnets.
    top = await session.scalar(
        select(Cvlan.net_end)
        .where(Cvlan.net_start >= p_start, Cvlan.net_start <= p_end)
        .order_by(Cvlan.net_start.desc())
        .limit(1)
    )
    cand = _skip_reserved(p_start if top is None else ((top + 1 + size - 1) // size) * size, size)
    if cand + size - 1 <= p_end and await _overlapping(session, cand, cand + size - 1) is None:
        return ipaddress.IPv4Network((cand, prefix))
    # Slow path: walk the gaps between existing subnets in address order.
    rows = (
        await session.execute(
            select(Cvlan.net_start, Cvlan.net_end)
            .where(Cvlan.net_end >= p_start, Cvlan.net_start <= p_end)
            .order_by(Cvlan.net_start)
        )
    ).all()
    cand = _skip_reserved(p_start, size)
    for s, e in rows:
        if cand + size - 1 < s:
            return ipaddress.IPv4Network((cand, prefix))
        cand = _skip_reserved(max(cand, ((e + 1 + size - 1) // size) * size), size)
    if cand + size - 1 <= p_end:
        return ipaddress.IPv4Network((cand, prefix))
    raise DomainError(Kind.EXHAUSTED, f"address pool {pool} has no free /{prefix} left")


async def allocate_address(
    session: AsyncSession, cvlan: Cvlan, holder: str, quarantine: dt.timedelta, now: dt.datetime
) -> str:
    """Allocate a /32 in the CVLAN: the lowest never-used address, else the longest-released one."""
    got = (await allocate_addresses(session, [(cvlan, holder)], quarantine, now))[0]
    if isinstance(got, DomainError):
        raise got
    return got


async def allocate_addresses(
    session: AsyncSession,
    wants: list[tuple[Cvlan, str]],
    quarantine: dt.timedelta,
    now: dt.datetime,
    *,
    locked: bool = False,
) -> list[str | DomainError]:
    """allocate_address for each (CVLAN, holder) in order, in one lock and one query for all their
    CVLANs: an address, or the error for that holder (nothing added to the session for it).

    Addresses are handed out lowest first, so a CVLAN whose allocations fill first..max without a gap
    (the common case; one aggregate query tells) gets max + 1 without reading its rows. A CVLAN with
    gaps, or whose never-used addresses are all taken, is scanned row by row. `locked`: the caller
    already holds the CVLAN rows (SELECT ... FOR UPDATE in this transaction)."""
    ids = sorted({c.id for c, _ in wants})
    if not locked and _dialect(session) == "postgresql":
        await session.execute(select(Cvlan.id).where(Cvlan.id.in_(ids)).order_by(Cvlan.id).with_for_update())
    stats: dict[int, tuple[int, int, int]] = {
        cid: (n, lo, hi)
        for cid, n, lo, hi in (
            await session.execute(
                select(
                    IpAllocation.cvlan_id,
                    func.count(),
                    func.min(IpAllocation.address),
                    func.max(IpAllocation.address),
                )
                .where(IpAllocation.cvlan_id.in_(ids))
                .group_by(IpAllocation.cvlan_id)
            )
        ).all()
    }
    following: dict[int, int | None] = {}
    for c in {c.id: c for c, _ in wants}.values():
        n, lo, hi = stats.get(c.id, (0, 0, 0))
        first = c.net_start + 1
        following[c.id] = first if n == 0 else hi + 1 if lo == first and hi - first + 1 == n else None
    out: list[str | DomainError] = []
    for cvlan, holder in wants:
        addr = following[cvlan.id]
        if addr is None or addr > cvlan.net_end - 1:
            following[cvlan.id] = None  # rows with gaps, or no never-used address left: scan
            out.append(await _allocate_scanning(session, cvlan, holder, quarantine, now))
            continue
        following[cvlan.id] = addr + 1
        _add(session, cvlan, addr, holder, now)
        out.append(str(ipaddress.IPv4Address(addr)))
    return out


def _add(session: AsyncSession, cvlan: Cvlan, addr: int, holder: str, now: dt.datetime) -> None:
    session.add(
        IpAllocation(
            tenant_id=cvlan.tenant_id, cvlan_id=cvlan.id, address=addr, holder=holder, allocated_at=now
        )
    )


async def _allocate_scanning(
    session: AsyncSession, cvlan: Cvlan, holder: str, quarantine: dt.timedelta, now: dt.datetime
) -> str | DomainError:
    """The lowest never-used address from all the CVLAN's rows, else the longest-released one."""
    rows = (
        await session.execute(
            select(IpAllocation.address, IpAllocation.released_at).where(IpAllocation.cvlan_id == cvlan.id)
        )
    ).all()
    used = {a for a, _ in rows}
    first, last = cvlan.net_start + 1, cvlan.net_end - 1
    for addr in range(first, last + 1):
        if addr not in used:
            _add(session, cvlan, addr, holder, now)
            return str(ipaddress.IPv4Address(addr))
        if len(used) >= last - first + 1:
            break
    released = sorted((r, a) for a, r in rows if r is not None and _aware(r) + quarantine <= now)
    if released:
        addr = released[0][1]
        alloc = await session.scalar(
            select(IpAllocation).where(IpAllocation.cvlan_id == cvlan.id, IpAllocation.address == addr)
        )
        assert alloc is not None
        alloc.released_at = None
        alloc.holder = holder
        alloc.allocated_at = now
        return str(ipaddress.IPv4Address(addr))
    return DomainError(
        Kind.EXHAUSTED,
        f"CVLAN {cvlan.name} ({cvlan.subnet}) has no free address; released addresses return "
        "after the quarantine",
    )


async def release_address(session: AsyncSession, cvlan_id: CvlanId, address: str, now: dt.datetime) -> None:
    alloc = await session.scalar(
        select(IpAllocation).where(
            IpAllocation.cvlan_id == cvlan_id,
            IpAllocation.address == int(ipaddress.IPv4Address(address)),
        )
    )
    if alloc is not None:
        alloc.released_at = now
        alloc.holder = ""


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _dialect(session: AsyncSession) -> str:
    return str(session.get_bind().dialect.name)
