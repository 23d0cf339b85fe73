"""cvlan-relay against a real controller that fails: revocation answers kept through an outage, a
bounded fail-open window, fail-closed on a definite refusal, a front URL refused at start; and the
per-receiver queue bounded in bytes. Every count is read from /metrics. About 25 s in all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cvlan.relay.revocation import FrontError
from cvlan.relay.settings import MIN_QUEUE_BYTES
from tests.harness.controller import RunningController
from tests.harness.relay import Relays, connect, flood, metrics, until_closed, ws_status

REFUSED = "cvlan_relay_refused_connections_total"


async def test_revoked_answer_is_kept_while_the_controller_is_down(relays: Relays) -> None:
    r = await relays.relay(fail_open_s=300.0)
    (a,) = await relays.nodes("a")
    ca, _ = await connect(r, a)
    (await relays.rc.api().delete(f"/api/v1/tenants/acme/nodes/{a.node_id}")).ok()
    await until_closed(ca, 10)
    await ca.close()
    await relays.rc.stop()
    await asyncio.sleep(1.5)  # the cached "revoked" (ttl 1 s) is now older than its ttl
    assert await ws_status(r, a.ssl()) == 403
    m = await metrics(r)
    assert m["cvlan_relay_revocation_check_errors_total"] >= 1
    assert m["cvlan_relay_connects_total"] == 1


async def test_fail_open_lasts_only_the_window(relays: Relays) -> None:
    r = await relays.relay(fail_open_s=4.0)
    a, b = await relays.nodes("a", "b")
    ca, _ = await connect(r, a)
    await relays.rc.stop()
    # Within the window a node the controller never confirmed is let in (fail open) ...
    assert await ws_status(r, b.ssl()) == 101
    # ... and once it has passed, connected nodes are closed and new ones refused.
    await until_closed(ca, 15)
    await ca.close()
    assert await ws_status(r, b.ssl()) == 503
    m = await metrics(r)
    assert m[REFUSED + '{reason="unchecked"}'] >= 2
    assert m["cvlan_relay_clients"] == 0


async def test_deleted_relay_fails_closed(relays: Relays) -> None:
    r = await relays.relay(fail_open_s=300.0)
    a, b = await relays.nodes("a", "b")
    ca, _ = await connect(r, a)
    (await relays.rc.api().delete(f"/api/v1/relays/{r.name}")).ok()
    # The controller now answers the relay's checks with 401: a definite refusal, not an outage.
    await until_closed(ca, 10)
    await ca.close()
    assert await ws_status(r, b.ssl()) == 503
    m = await metrics(r)
    assert m[REFUSED + '{reason="check_refused"}'] >= 2


async def test_relay_pointed_at_a_plain_listener_is_refused_at_start(relays: Relays, tmp_path: Path) -> None:
    """A TLS front passes the relay's requests on without its certificate: the controller says so
    (412) and the relay refuses to start with one line naming the fix."""
    r = await relays.relay()
    await r.stop()  # registered: the state dir holds its identity
    plain = await RunningController(
        tmp_path / "plain", f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}", tls=False
    ).start()
    try:
        with pytest.raises(FrontError) as err:
            await r.start(server=f"http://127.0.0.1:{plain.port}", token="")
        text = str(err.value)
        assert "http 412" in text and "controller's own listener" in text and "\n" not in text
    finally:
        await plain.stop()


async def test_slow_receiver_queue_is_bounded_in_bytes(relays: Relays) -> None:
    """Frames of 60 KB to a receiver that does not read: with a frame bound of a million the
    relay still drops once MIN_QUEUE_BYTES x 2 are queued, and counts the drops."""
    r = await relays.relay(queue_len=1_000_000, queue_bytes=MIN_QUEUE_BYTES * 2)
    a, b = await relays.nodes("a", "b")
    n, size = 600, 60_000
    got = await flood(r, a, b, n, size, every=20)
    assert len(got.received) + got.dropped == n
    # What arrived is what the kernel's socket buffers held plus at most the byte bound: far
    # less than the 36 MB sent (a frame bound alone would have queued all of it).
    assert len(got.received) < n // 2, f"{len(got.received)} of {n} frames of {size} bytes arrived"
    assert got.received == sorted(got.received) and got.received[-1] == n - 1
