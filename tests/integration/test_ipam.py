"""Address management on both databases: concurrency, exhaustion, quarantine, subnet overlaps."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cvlan.common.clock import FakeClock
from cvlan.controller.errors import DomainError
from cvlan.controller.ops import cvlans, nodes
from tests.harness.controller import RunningController
from tests.harness.seed import enrol_node


async def test_200_concurrent_allocations_are_distinct(controller: RunningController) -> None:
    api = controller.api()
    await api.post("/api/v1/tenants", {"name": "acme"})
    (await api.post("/api/v1/tenants/acme/cvlans", {"name": "lan"})).ok()
    tok = (await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "lan", "uses": 200})).ok()
    assert controller.c is not None
    ctx = controller.c.ctx

    async def register(i: int) -> str:
        for _ in range(20):  # a serialisation failure on PostgreSQL is retried, as the node would
            try:
                async with ctx.tx() as s:
                    t = await cvlans.consume_token(ctx, s, tok["token"])
                    return (await nodes.create(ctx, s, t, os.urandom(32), f"host{i}")).address
            except DomainError as e:
                if e.kind.value != "unavailable":
                    raise
        raise AssertionError("allocation kept failing")

    addrs = await asyncio.gather(*(register(i) for i in range(200)))
    assert len(set(addrs)) == 200
    net = ipaddress.ip_network("100.64.0.0/24")
    assert all(ipaddress.ip_address(a) in net for a in addrs)
    listed = (await api.get("/api/v1/tenants/acme/nodes?limit=1000")).ok()
    assert listed["total"] == 200 and len({n["address"] for n in listed["items"]}) == 200
    # The token's use limit held exactly.
    t = (await api.get("/api/v1/tenants/acme/tokens")).ok()["items"][0]
    assert t["uses"] == 200
    res = await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "lan"})
    assert res.status == 201


async def test_exhaustion_is_a_clear_error(controller: RunningController) -> None:
    api = controller.api()
    await api.post("/api/v1/tenants", {"name": "acme"})
    (await api.post("/api/v1/tenants/acme/cvlans", {"name": "tiny", "subnet": "10.9.9.0/30"})).ok()
    tok = (await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "tiny", "uses": 5})).ok()
    got = [(await enrol_node(controller, tok["token"], f"h{i}"))["address"] for i in range(2)]
    assert got == ["10.9.9.1", "10.9.9.2"]
    try:
        await enrol_node(controller, tok["token"], "h3")
        raise AssertionError("expected exhaustion")
    except DomainError as e:
        assert e.kind.value == "exhausted" and "no free address" in e.message


async def test_released_addresses_wait_out_the_quarantine(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    rc = await RunningController(tmp_path / "d", db_url, clock=clock, address_quarantine_s=600).start()
    try:
        api = rc.api()
        await api.post("/api/v1/tenants", {"name": "acme"})
        (await api.post("/api/v1/tenants/acme/cvlans", {"name": "tiny", "subnet": "10.9.9.0/30"})).ok()
        tok = (await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "tiny", "uses": 10})).ok()
        n1 = await enrol_node(rc, tok["token"], "h1")
        await enrol_node(rc, tok["token"], "h2")
        assert (await api.delete(f"/api/v1/tenants/acme/nodes/{n1['id']}")).status == 204
        clock.advance(599)
        try:
            await enrol_node(rc, tok["token"], "h3")
            raise AssertionError("address reused inside the quarantine")
        except DomainError as e:
            assert e.kind.value == "exhausted"
        clock.advance(2)
        assert (await enrol_node(rc, tok["token"], "h3"))["address"] == n1["address"]
    finally:
        await rc.stop()


async def test_subnets_never_overlap(controller: RunningController) -> None:
    api = controller.api()
    await api.post("/api/v1/tenants", {"name": "a"})
    await api.post("/api/v1/tenants", {"name": "b"})
    s1 = (await api.post("/api/v1/tenants/a/cvlans", {"name": "one"})).ok()["subnet"]
    s2 = (await api.post("/api/v1/tenants/b/cvlans", {"name": "one"})).ok()["subnet"]
    assert s1 != s2
    res = await api.post("/api/v1/tenants/b/cvlans", {"name": "two", "subnet": "100.64.0.128/25"})
    assert res.status == 409 and "overlaps" in res.body["error"]["message"]
    res = await api.post("/api/v1/tenants/b/cvlans", {"name": "two", "subnet": "100.64.0.1/24"})
    assert res.status == 422 and "host bits" in res.body["error"]["message"]
    # A requested subnet inside the pool is skipped by later automatic allocations.
    (await api.post("/api/v1/tenants/b/cvlans", {"name": "three", "subnet": "100.64.2.0/24"})).ok()
    auto = [(await api.post("/api/v1/tenants/a/cvlans", {"name": f"x{i}"})).ok()["subnet"] for i in range(3)]
    nets = [ipaddress.ip_network(s) for s in [s1, s2, "100.64.2.0/24", *auto]]
    assert not any(x.overlaps(y) for i, x in enumerate(nets) for y in nets[i + 1 :])
