"""Property tests of IPAM on a real (SQLite) store: random sequences of operations keep the invariants."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cvlan.controller import ipam
from cvlan.controller.db.engine import create_engine, session_factory, upgrade_sync
from cvlan.controller.db.models import Cvlan, Tenant
from cvlan.controller.errors import DomainError

QUARANTINE = dt.timedelta(seconds=100)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 0)),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("wait"), st.integers(1, 150)),
    ),
    max_size=40,
)


async def _run(ops_: list[tuple[str, int]], url: str) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    now = T0
    held: dict[str, dt.datetime] = {}
    released: dict[str, dt.datetime] = {}
    try:
        async with sessions() as s, s.begin():
            net = await ipam.allocate_subnet(s, "100.64.0.0/10", 29, None)
            c = Cvlan(
                tenant_id=1,
                name="c",
                subnet=str(net),
                net_start=int(net.network_address),
                net_end=int(net.broadcast_address),
                mode="mesh",
                version=1,
                created_at=now,
            )
            s.add(c)
        for op, arg in ops_:
            if op == "wait":
                now += dt.timedelta(seconds=arg)
            elif op == "release" and held:
                addr = sorted(held)[arg % len(held)]
                async with sessions() as s, s.begin():
                    await ipam.release_address(s, c.id, addr, now)
                del held[addr]
                released[addr] = now
            elif op == "alloc":
                try:
                    async with sessions() as s, s.begin():
                        addr = await ipam.allocate_address(s, c, "x", QUARANTINE, now)
                except DomainError as e:
                    assert e.kind.value == "exhausted"
                    free_now = [a for a, t in released.items() if t + QUARANTINE <= now]
                    assert len(held) + len(released) == 6 and not free_now
                    continue
                ip = ipaddress.ip_address(addr)
                assert ip in net and ip not in (net.network_address, net.broadcast_address)
                assert addr not in held, "address handed out twice"
                if addr in released:
                    assert released.pop(addr) + QUARANTINE <= now, "reused inside the quarantine"
                held[addr] = now
    finally:
        await engine.dispose()


async def _with_tenant(url: str) -> None:
    engine = create_engine(url)
    async with session_factory(engine)() as s, s.begin():
        s.add(Tenant(id=1, name="t", display_name="", created_at=T0))
    await engine.dispose()


@settings(max_examples=40, deadline=None)
@given(ops_=ops)
def test_ipam_invariants(ops_: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite+aiosqlite:///{Path(d) / 'x.db'}"
        upgrade_sync(url)
        asyncio.run(_with_tenant(url))
        asyncio.run(_run(ops_, url))


@settings(max_examples=25, deadline=None)
@given(
    requests=st.lists(
        st.one_of(
            st.none(),
            st.sampled_from(
                [
                    "100.64.0.0/24",
                    "100.64.1.0/25",
                    "100.64.0.0/16",
                    "10.0.0.0/24",
                    "100.64.3.128/26",
                    "100.64.2.0/23",
                ]
            ),
        ),
        max_size=12,
    )
)
def test_subnets_never_overlap(requests: list[str | None]) -> None:
    async def run(url: str) -> None:
        engine = create_engine(url)
        sessions = session_factory(engine)
        got: list[ipaddress.IPv4Network] = []
        try:
            for i, req in enumerate(requests):
                try:
                    async with sessions() as s, s.begin():
                        net = await ipam.allocate_subnet(s, "100.64.0.0/10", 24, req)
                        s.add(
                            Cvlan(
                                tenant_id=1,
                                name=f"c{i}",
                                subnet=str(net),
                                net_start=int(net.network_address),
                                net_end=int(net.broadcast_address),
                                mode="mesh",
                                version=1,
                                created_at=T0,
                            )
                        )
                except DomainError as e:
                    assert e.kind.value == "conflict" and req is not None
                    assert any(ipaddress.ip_network(req).overlaps(g) for g in got)
                    continue
                assert not any(net.overlaps(g) for g in got)
                got.append(net)
        finally:
            await engine.dispose()

    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite+aiosqlite:///{Path(d) / 'x.db'}"
        upgrade_sync(url)
        asyncio.run(_with_tenant(url))
        asyncio.run(run(url))
