"""Peer health events and history live in the database: two controller processes on one database
answer the same, a degradation is found whichever process took the previous report, a restart keeps
them, and they are bounded (24 h, a sample a minute, a cap of events per CVLAN)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from cvlan.client.controller import NodeApiClient
from cvlan.common.clock import FakeClock
from cvlan.controller.nodeapi.handlers import NODEAPI_KEY
from cvlan.controller.ops import health
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.nodes import EnrolledNode, ca_pem, enrol, make_token

DIRECT, RELAY = pb.PEER_HEALTH_PATH_DIRECT, pb.PEER_HEALTH_PATH_RELAY
HEALTH = "/api/v1/tenants/acme/cvlans/office/health"


def _report(peer: int, path: int, answered: int = 20) -> pb.HealthSummary:
    return pb.HealthSummary(
        peers=[
            pb.PeerHealth(
                node_id=peer,
                path=path,
                relay_region="eu" if path == RELAY else "",
                rtt_us=2500,
                probes_sent=20,
                probes_answered=answered,
            )
        ]
    )


async def _flush(rc: RunningController) -> None:
    assert rc.c is not None
    await rc.c.app[NODEAPI_KEY].liveness.flush()


def _seen(h: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    return [(e["kind"], e["node"], e["peer"]) for e in h["events"]], h["history"]


async def test_events_and_history_are_shared_by_controllers_and_survive_a_restart(
    db_url: str, tmp_path: Path
) -> None:
    one = await RunningController(tmp_path / "data", db_url).start()
    two = await RunningController(tmp_path / "data", db_url).start()  # same CA, same database
    two.admin_token = one.admin_token
    nodes: list[EnrolledNode] = []
    via_two: NodeApiClient | None = None
    try:
        token = await make_token(one, uses=2)
        a, b = nodes[:] = [await enrol(one, token, "a"), await enrol(one, token, "b")]
        for n in nodes:
            await n.client.poll(0)
        await a.client.report([], _report(b.node_id, DIRECT))
        await _flush(one)
        # The next report reaches the other process, which never saw the first: still a fallback.
        via_two = NodeApiClient(two.url, ca_pem(two), a.reg.certificate_pem, a.key_pem)
        await via_two.report([], _report(b.node_id, RELAY))
        await _flush(two)
        # A poll through one, which took a's older report (direct), writes its summary only: the
        # peers two stored since stay.
        await a.client.poll(0, health=pb.HealthSummary(peers_total=1, peers_relay=1))
        await _flush(one)
        node = (await two.api().get(f"/api/v1/tenants/acme/nodes/{a.node_id}")).ok()
        assert node["health"]["peers_relay"] == 1 and node["health"]["peers"][0]["path"] == "relay"
        # b stops hearing a (through one): no member reaches a.
        await b.client.report([], _report(a.node_id, DIRECT, answered=0))
        await _flush(one)
        expected = [("unreachable", "a", ""), ("relay_fallback", "a", "b")]
        from_one = (await one.api().get(HEALTH)).ok()
        from_two = (await two.api().get(HEALTH)).ok()
        assert _seen(from_one)[0] == expected
        assert _seen(from_one) == _seen(from_two)
        history = from_one["history"]
        assert len(history) == 1 and history[0]["ok"] == 1  # one sample a minute at most
        events = (await two.api().get("/api/v1/tenants/acme/health/events")).ok()["items"]
        assert [e["kind"] for e in events] == ["unreachable", "relay_fallback"]
        # Process one took a's first report (direct), two the newer one (relay): a's next report
        # through one is compared with the newer, so "still relayed" is no new event.
        await a.client.report([], _report(b.node_id, RELAY))
        await _flush(one)
        assert _seen((await one.api().get(HEALTH)).ok())[0] == expected
        # Restart: nothing is lost, and a report is compared with the one stored before the restart.
        await one.stop()
        one = await RunningController(tmp_path / "data", db_url).start()
        one.admin_token = two.admin_token
        assert _seen((await one.api().get(HEALTH)).ok()) == _seen(from_one)
        a.client = NodeApiClient(one.url, ca_pem(one), a.reg.certificate_pem, a.key_pem)
        await a.client.report([], _report(b.node_id, DIRECT))
        await _flush(one)
        after = _seen((await two.api().get(HEALTH)).ok())[0]
        assert after == [("direct_again", "a", "b"), *expected]
    finally:
        for n in nodes:
            await n.client.close()
        if via_two is not None:
            await via_two.close()
        await two.stop()
        await one.stop()


async def test_history_and_events_are_bounded_and_pruned(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "MAX_EVENTS_PER_CVLAN", 5)
    clock = FakeClock(dt.datetime.now(dt.UTC))
    rc = await RunningController(tmp_path / "d", db_url, clock=clock).start()
    try:
        token = await make_token(rc, uses=2)
        a, b = await enrol(rc, token, "a"), await enrol(rc, token, "b")
        await b.client.poll(0)
        for i in range(8):  # a flaps between direct and relay, a report every 30 s
            await a.client.poll(0)
            await a.client.report([], _report(b.node_id, RELAY if i % 2 else DIRECT))
            await _flush(rc)  # events are found as reports are written
            clock.advance(30)
        h = (await rc.api().get(HEALTH)).ok()
        assert len(h["events"]) == 5, h["events"]  # 7 changes, the newest 5 kept
        assert [e["kind"] for e in h["events"][:2]] == ["relay_fallback", "direct_again"]
        times = [s["at"] for s in h["history"]]
        assert len(times) == 4  # 8 reports over 4 minutes, a sample a minute
        clock.advance(health.HISTORY_S - 140)  # now 24 h after t=100 s
        assert rc.c is not None
        async with rc.c.ctx.tx() as s:
            gone = await health.prune(rc.c.ctx, s)
        assert gone == 1 + 2  # the event of t=90 s, the samples of t=0 and t=60 s
        h = (await rc.api().get(HEALTH)).ok()
        assert len(h["events"]) == 4 and len(h["history"]) == 2
        # The controller's own pruning loop does the same as time goes on.
        clock.advance(200)
        stop = asyncio.Event()
        loop = asyncio.create_task(health.run_pruner(rc.c.ctx, stop, every=0.05))
        for _ in range(200):
            h = (await rc.api().get(HEALTH)).ok()
            if not h["events"] and not h["history"]:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(loop, 5)
        assert h["events"] == [] and h["history"] == []
        await a.client.close()
        await b.client.close()
    finally:
        await rc.stop()
