"""The simulated fleet's poll schedule: a shorter interval takes effect at once, and reconnects back off."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from cvlan.sim.churn import ChurnConfig
from cvlan.sim.fleet import RECONNECT_CAP_S, RETRY_BASE_S, Fleet, FleetConfig, _worker
from cvlan.wire.nodeproto import HEALTH_REFRESH_S, MAX_HEALTH_PEERS
from cvlan.wire.pb import node_pb2 as pb
from cvlan.wire.peerhealth import HealthSent


def _fleet(loop: asyncio.AbstractEventLoop, n: int, long_poll_s: int = 0) -> Fleet:
    """A fleet that never connects: only its scheduling is exercised (plain polling unless asked)."""
    cfg = FleetConfig(
        host="127.0.0.1",
        port=1,
        server_name="localhost",
        ca_pem="",
        tokens=[f"t{i}" for i in range(n)],
        first_index=0,
        index_step=1,
        reg_rate=1.0,
        t0_wall=time.time(),
        long_poll_s=long_poll_s,
    )
    fleet = Fleet(cfg, loop)
    os.rmdir(fleet._tmp)  # its scratch directory for certificates is not needed here
    return fleet


def _spread(loop: asyncio.AbstractEventLoop, fleet: Fleet, over: float) -> float:
    """Schedule the nodes' next polls evenly over the next `over` seconds (an old interval); the
    scheduled polls never fire. Returns the loop time they count from."""
    now = loop.time()
    fleet._fire = lambda node, due: None  # type: ignore[method-assign]
    for i, node in enumerate(fleet.nodes):
        node.next_due = now + over * i / len(fleet.nodes)
        node.timer = loop.call_at(node.next_due, fleet._fire, node, node.next_due)
    return now


def _thirds(dues: list[float], span: float) -> list[int]:
    return [sum(1 for d in dues if k * span / 3 <= d < (k + 1) * span / 3) for k in range(3)]


def test_shorter_interval_respreads_polls_uniformly() -> None:
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 2000)
        now = _spread(loop, fleet, 120.0)
        moved = fleet.respread(30.0, 120.0)
        done = loop.time()  # respread reads the clock itself, a little after `now`
        # Those due within the new interval keep their time; the other three quarters move into it.
        assert 1450 <= moved <= 1550
        dues = [n.next_due - now for n in fleet.nodes]
        assert max(dues) <= done - now + 30.0
        # Uniform: each 10 s third of the new interval holds about a third of the polls.
        assert all(560 <= t <= 780 for t in _thirds(dues, 30.0)), _thirds(dues, 30.0)
    finally:
        loop.close()


def test_longer_interval_respreads_every_poll_over_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 2000)
        now = _spread(loop, fleet, 30.0)
        assert fleet.respread(90.0, 30.0) == 2000
        done = loop.time()
        dues = [n.next_due - now for n in fleet.nodes]
        assert max(dues) <= done - now + 90.0
        # The fleet polls at the new, lower rate from now on: each 30 s third holds about a third,
        # where before the change every poll fell within the first.
        assert all(560 <= t <= 780 for t in _thirds(dues, 90.0)), _thirds(dues, 90.0)
    finally:
        loop.close()


def test_reconnect_backs_off_as_the_agent() -> None:
    loop = asyncio.new_event_loop()
    try:
        plain = _fleet(loop, 1)
        node = plain.nodes[0]
        # A node polling plainly waits cvlan-ctrl's backoff by its failed attempts: up to 0.5 s
        # doubling to the cap, each delay anywhere below it (common.backoff.delay, full jitter).
        for k in (0, 4, 20):
            node.failures = k
            d = min(RECONNECT_CAP_S, RETRY_BASE_S * 2**k)
            waits = [plain.reconnect_delay(node) for _ in range(500)]
            assert (
                0 <= min(waits) < d / 4 and 3 * d / 4 < max(waits) <= d
            )  # the fleet does not come back at once
        # A long-polling node whose poll failed has waited that backoff already: it connects at once,
        # and waits again only after a failed attempt.
        long = _fleet(loop, 1, long_poll_s=30)
        node = long.nodes[0]
        assert long.reconnect_delay(node) == 0.0
        node.failures = 3
        assert 2.0 <= long.reconnect_delay(node) <= 4.0
    finally:
        loop.close()


def test_a_long_poll_follows_its_answer_and_a_failed_one_backs_off_as_the_agent() -> None:
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 1, long_poll_s=30)
        node = fleet.nodes[0]
        # answered: the next long-poll goes out at once, with no timer
        fleet._next_long_poll(node, True)
        assert node.timer is None and node.poll_failures == 0
        # failed, again and again: cvlan-ctrl's backoff, up to 0.5 s doubling to the 30 s cap, each
        # delay anywhere below it (full jitter), and it starts over after a success
        for k in range(9):
            fleet._next_long_poll(node, False)
            assert node.timer is not None
            d = min(RECONNECT_CAP_S, RETRY_BASE_S * 2**k)
            assert 0 <= node.timer.when() - loop.time() <= d + 0.01
            node.timer.cancel()
        fleet._next_long_poll(node, True)
        assert node.poll_failures == 0
        # a long-polling fleet keeps no interval schedule to respread
        assert fleet.respread(5.0, 30.0) == 0
    finally:
        loop.close()


def test_a_node_restarting_at_the_end_is_not_stale_but_still_a_peer() -> None:
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 3, long_poll_s=30)
        for i, node in enumerate(fleet.nodes):
            node.node_id, node.cvlan_id, node.map_version, node.peers = i + 1, 7, 42, 2
        # The third restarted just before the end: no map yet, but the others still list it.
        fleet.nodes[2].restarted, fleet.nodes[2].map_version, fleet.nodes[2].peers = 1.0, 0, 0
        fleet.check_maps()
        assert fleet.iv.ok["map_current"] == 2 and fleet.iv.ok["map_restarting"] == 1
        assert not fleet.iv.errors
        # A node that missed a change is still found.
        fleet.iv = type(fleet.iv)()
        fleet.nodes[1].map_version = 41
        fleet.check_maps()
        assert fleet.iv.errors["map_stale"] == 1
    finally:
        loop.close()


def test_registrations_still_queued_when_the_registration_phase_ends_are_not_sent() -> None:
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 1, long_poll_s=30)
        fleet.cfg.timeout_s = 1.0
        fleet.stop_registering = lambda: True
        loop.run_until_complete(fleet._register(fleet.nodes[0], loop.time()))
        # nothing was tried: no connection attempt, no error, no node
        assert not fleet.iv.errors and fleet.registered == 0 and not fleet.nodes[0].node_id
    finally:
        loop.close()


def test_a_churning_fleet_still_polls_and_registers_while_its_last_changes_settle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the end of a run the worker hands the fleet to drain() still running: a node answered
    during the settle polls again and a join made at the last churn tick is sent. (It used to stop
    the fleet first: the last ticks' joins never registered and the settle polled nothing.)"""
    seen: list[tuple[bool, bool]] = []
    real_drain = Fleet.drain

    async def drain(self: Fleet, timeout: float) -> None:
        node = self.nodes[0]
        node.long_poll, node.discovered = 30, True
        self._pump = lambda node: None  # type: ignore[method-assign]
        self._fire(node, self.loop.time())  # an answered long-poll is followed by the next
        seen.append((self.stopping, bool(node.queue)))
        node.queue.clear()
        await real_drain(self, 0.2)

    monkeypatch.setattr(Fleet, "drain", drain)
    monkeypatch.setattr("cvlan.sim.fleet.CHURN_SETTLE_S", 0.05)
    cfg = FleetConfig(
        host="127.0.0.1",
        port=1,
        server_name="localhost",
        ca_pem="",
        tokens=["t0"],
        first_index=0,
        index_step=1,
        reg_rate=1.0,
        t0_wall=time.time() + 3600,  # its registration is not due during the test
        churn=ChurnConfig(join=0.01),
    )
    reports: list[dict[str, object]] = []
    asyncio.run(_worker(cfg, reports.append, lambda: True, None, None, None))
    assert seen == [(False, True)]
    assert reports[-1].get("final")


def test_a_node_reports_its_peers_health_as_cvlan_ctrl_does() -> None:
    """Every report interval a node looks at its peers' health: reported the first time, then only
    when its peers changed or HEALTH_REFRESH_S after the last report delivered; each report carries an
    entry per peer of its map (at most MAX_HEALTH_PEERS, the rest counted as omitted)."""
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 1, long_poll_s=30)
        fleet.cfg.report_interval_s = 10.0
        node = fleet.nodes[0]
        t0 = loop.time()
        node.up_at, node.report_at = t0 - 60, t0 - 1  # up for a minute, its look is due
        answer = pb.PollResponse(map_version=5, map=pb.NetworkMap(self=pb.SelfNode(node_id=0)))
        answer.map.peers.extend(pb.Peer(node_id=i) for i in range(1, 71))
        fleet._poll_answer(node, answer)
        assert fleet._report_due(node)
        assert not fleet._report_due(node)  # the next look is an interval later
        req = pb.ReportRequest.FromString(fleet._body(node, "report").split(b"\r\n\r\n", 1)[1])
        h = req.health
        assert len(h.peers) == MAX_HEALTH_PEERS and h.peers_omitted == 70 - MAX_HEALTH_PEERS
        assert h.peers_total == 70 and {p.path for p in h.peers} == {pb.PEER_HEALTH_PATH_DIRECT}
        assert all(p.probes_sent == p.probes_answered > 0 and p.rtt_us > 0 for p in h.peers)
        assert fleet._done(node, "report", t0, 200, b"", "")
        # delivered: unchanged health is not reported again at the next looks...
        node.report_at = loop.time() - 1
        assert not fleet._report_due(node)
        # ...until a peer joins or leaves its map
        del answer.map.peers[0]  # (one of those reported: the agent signs what it reports)
        answer.map_version = 6
        fleet._poll_answer(node, answer)
        node.report_at = loop.time() - 1
        assert fleet._report_due(node)
        # or the refresh is due, counted from the last report delivered
        fleet._body(node, "report")
        fleet._done(node, "report", t0, 200, b"", "")
        assert node.health_sent is not None
        node.health_sent = HealthSent(node.health_sent.signature, node.health_sent.at - HEALTH_REFRESH_S)
        node.report_at = loop.time() - 1
        assert fleet._report_due(node)
        # a report that failed leaves the health unreported
        fleet._body(node, "report")
        fleet._done(node, "report", t0, 503, b"", "")
        node.report_at = loop.time() - 1
        assert fleet._report_due(node)
    finally:
        loop.close()


def test_the_drain_lets_changes_under_way_end_before_the_fleet_settles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A join registering (or a DELETE answered) after the fleet stopped polling would leave its CVLAN's
    members on the map of before, and the joiner with none: the drain waits for the changes under
    way, then lets the fleet poll for the settle, then checks the maps."""
    monkeypatch.setattr("cvlan.sim.fleet.CHURN_SETTLE_S", 0.05)
    loop = asyncio.new_event_loop()
    try:
        fleet = _fleet(loop, 1, long_poll_s=30)
        fleet.cfg.churn = ChurnConfig(join=0.01)
        seen: list[tuple[str, bool]] = []

        async def join() -> None:
            await asyncio.sleep(0.3)  # a registration answered late
            seen.append(("joined", fleet.stopping))

        fleet.check_maps = lambda: seen.append(("checked", fleet.stopping))  # type: ignore[method-assign]
        fleet._spawn(join())
        loop.run_until_complete(fleet.drain(5.0))
        assert seen == [("joined", False), ("checked", True)]
    finally:
        loop.close()
