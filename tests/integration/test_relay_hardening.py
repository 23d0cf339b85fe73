"""cvlan-relay against a real controller that fails: revocation answers kept through an outage, a
bounded fail-open window, fail-closed on a definite refusal, a front URL refused at start; and the
per-receiver queue bounded in bytes. Every count is read from /metrics. About 25 s in all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from cvlan.client.relay import ws_url
from cvlan.relay.revocation import FrontError
from cvlan.relay.settings import MIN_QUEUE_BYTES
from cvlan.wire import relayproto as rp
from tests.harness.controller import RunningController
from tests.harness.relay import Fleet, RunningRelay
from tests.integration.test_relay import _ws_status, connect, metrics

REFUSED = "cvlan_relay_refused_connections_total"


@pytest.fixture
def rc(sqlite_controller: RunningController) -> RunningController:
    return sqlite_controller


async def _relay(rc: RunningController, tmp_path: Path, **settings: object) -> RunningRelay:
    return await (await RunningRelay(rc, tmp_path / "relay").create()).start(**settings)


async def _until_closed(client: object, timeout: float) -> None:
    connected: asyncio.Event = client.connected  # type: ignore[attr-defined]
    async with asyncio.timeout(timeout):
        while connected.is_set():
            await asyncio.sleep(0.05)


async def test_revoked_answer_is_kept_while_the_controller_is_down(
    rc: RunningController, tmp_path: Path
) -> None:
    r = await _relay(rc, tmp_path, fail_open_s=300.0)
    try:
        fleet = await Fleet.create(rc, "acme", ["office"])
        a = await fleet.node("office", "a")
        ca, _ = await connect(r, a)
        (await rc.api().delete(f"/api/v1/tenants/acme/nodes/{a.node_id}")).ok()
        await _until_closed(ca, 10)
        await ca.close()
        await rc.stop()
        await asyncio.sleep(1.5)  # the cached "revoked" (ttl 1 s) is now older than its ttl
        assert await _ws_status(r, a.ssl()) == 403
        m = await metrics(r)
        assert m["cvlan_relay_revocation_check_errors_total"] >= 1
        assert m["cvlan_relay_connects_total"] == 1
    finally:
        await r.stop()


async def test_fail_open_lasts_only_the_window(rc: RunningController, tmp_path: Path) -> None:
    r = await _relay(rc, tmp_path, fail_open_s=4.0)
    try:
        fleet = await Fleet.create(rc, "acme", ["office"])
        a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
        ca, _ = await connect(r, a)
        await rc.stop()
        # Within the window a node the controller never confirmed is let in (fail open) ...
        assert await _ws_status(r, b.ssl()) == 101
        # ... and once it has passed, connected nodes are closed and new ones refused.
        await _until_closed(ca, 15)
        await ca.close()
        assert await _ws_status(r, b.ssl()) == 503
        m = await metrics(r)
        assert m[REFUSED + '{reason="unchecked"}'] >= 2
        assert m["cvlan_relay_clients"] == 0
    finally:
        await r.stop()


async def test_deleted_relay_fails_closed(rc: RunningController, tmp_path: Path) -> None:
    r = await _relay(rc, tmp_path, fail_open_s=300.0)
    try:
        fleet = await Fleet.create(rc, "acme", ["office"])
        a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
        ca, _ = await connect(r, a)
        (await rc.api().delete(f"/api/v1/relays/{r.name}")).ok()
        # The controller now answers the relay's checks with 401: a definite refusal, not an outage.
        await _until_closed(ca, 10)
        await ca.close()
        assert await _ws_status(r, b.ssl()) == 503
        m = await metrics(r)
        assert m[REFUSED + '{reason="check_refused"}'] >= 2
    finally:
        await r.stop()


async def test_relay_pointed_at_a_plain_listener_is_refused_at_start(
    rc: RunningController, tmp_path: Path
) -> None:
    """A TLS front passes the relay's requests on without its certificate: the controller says so
    (412) and the relay refuses to start with one line naming the fix."""
    r = await RunningRelay(rc, tmp_path / "relay").create()
    await (await r.start()).stop()  # registered: the state dir holds its identity
    plain = await RunningController(
        tmp_path / "ctrl", f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", tls=False
    ).start()
    try:
        with pytest.raises(FrontError) as err:
            await r.start(server=f"http://127.0.0.1:{plain.port}", token="")
        text = str(err.value)
        assert "http 412" in text and "controller's own listener" in text and "\n" not in text
    finally:
        await plain.stop()


async def test_slow_receiver_queue_is_bounded_in_bytes(rc: RunningController, tmp_path: Path) -> None:
    """Frames of 60 KB to a receiver that does not read: with a frame bound of a million the
    relay still drops once MIN_QUEUE_BYTES x 2 are queued, and counts the drops."""
    r = await _relay(rc, tmp_path, queue_len=1_000_000, queue_bytes=MIN_QUEUE_BYTES * 2)
    fleet = await Fleet.create(rc, "acme", ["office"])
    a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
    ca, _ = await connect(r, a, queue_len=1_000_000, queue_bytes=1 << 30)
    n, size = 600, 60_000
    try:
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(r.url), ssl=b.ssl()) as wsb:
            for i in range(n):
                ca.send(b.wg_key, i.to_bytes(4, "big") + bytes(size))
                if i % 20 == 0:
                    await asyncio.sleep(0)
            async with asyncio.timeout(60):
                while (await metrics(r)).get('cvlan_relay_frames_total{direction="forwarded"}', 0) < n:
                    await asyncio.sleep(0.1)
            received: list[int] = []
            async with asyncio.timeout(30):
                while not received or received[-1] != n - 1:
                    f = rp.parse_frame((await wsb.receive()).data)
                    if isinstance(f, rp.RecvPacket):
                        received.append(int.from_bytes(f.packet[:4], "big"))
        m = await metrics(r)
        dropped = m['cvlan_relay_drops_total{reason="queue_head"}']
        assert len(received) + dropped == n
        # What arrived is what the kernel's socket buffers held plus at most the byte bound: far
        # less than the 36 MB sent (a frame bound alone would have queued all of it).
        assert len(received) < n // 2, f"{len(received)} of {n} frames of {size} bytes arrived"
        assert received == sorted(received) and received[-1] == n - 1
    finally:
        await ca.close()
        await r.stop()
