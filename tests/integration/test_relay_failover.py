"""cvland's relay path against two real relays of one region: a node's home relay is chosen among
all of the region's relays, the sender finds the receiver there, and when that relay stops both
move to the region's other relay and datagrams flow again. UDP sockets on loopback stand where
wireguard-go's port would be (the e2e test runs the real thing). About 10 s."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from cvlan.cvland.relaychoice import rendezvous
from cvlan.cvland.relaypath import RelayPath
from cvlan.devtools.harness.enrol import EnrolledNode
from cvlan.wire.ipc import DesiredState, PeerConfig, RelayInfo
from tests.harness.controller import RunningController
from tests.harness.relay import Fleet, RunningRelay, metrics


@pytest.fixture
def rc(sqlite_controller: RunningController) -> RunningController:
    return sqlite_controller


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _state(me: EnrolledNode, peer: EnrolledNode, port: int, relays: list[RelayInfo]) -> DesiredState:
    return DesiredState(
        version=1,
        node_id=me.node_id,
        private_key=me.wg_private.hex(),
        address="100.64.0.1/32",
        cvlan_subnet="100.64.0.0/24",
        listen_port=port,
        peers=[PeerConfig(public_key=peer.wg_key.hex(), allowed_ips=["100.64.0.2/32"], relay_region="eu")],
        relays=relays,
        tls_cert_pem=me.cert_pem,
        tls_key_pem=me.key_pem,
        ca_pem=me.ca_pem,
    )


async def _send_until_received(src: socket.socket, dst: socket.socket, to: str, timeout: float) -> int:
    """Send numbered datagrams every 50 ms until one arrives; how many were sent."""
    host, _, port = to.rpartition(":")
    async with asyncio.timeout(timeout):
        for i in range(10_000):
            src.sendto(i.to_bytes(4, "big"), (host, int(port)))
            await asyncio.sleep(0.05)
            try:
                dst.recvfrom(100)
                return i + 1
            except BlockingIOError:
                continue
    raise AssertionError("unreachable")


async def test_pair_moves_to_the_regions_other_relay_when_theirs_stops(
    rc: RunningController, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    r1 = await (await RunningRelay(rc, tmp_path / "r1", name="r1").create()).start()
    r2 = await (await RunningRelay(rc, tmp_path / "r2", name="r2").create()).start()
    relays = {r.url: r for r in (r1, r2)}
    fleet = await Fleet.create(rc, "acme", ["office"])
    a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
    wa, wb = _udp(), _udp()
    pa, pb = RelayPath(loop), RelayPath(loop)
    infos = [RelayInfo(region="eu", url=r.url) for r in (r1, r2)]
    try:
        pa.configure(_state(a, b, wa.getsockname()[1], infos))
        pb.configure(_state(b, a, wb.getsockname()[1], infos))
        await asyncio.sleep(0)
        ep = pa.endpoint_for(b.wg_key.hex(), "eu")
        assert ep is not None
        await _send_until_received(wa, wb, ep, 10)
        fwd = 'cvlan_relay_frames_total{direction="forwarded"}'
        (used,) = [url for url, r in relays.items() if (await metrics(r)).get(fwd, 0) > 0]
        await relays.pop(used).stop()
        lost = await _send_until_received(wa, wb, ep, 15)
        print(f"{lost} datagrams sent (50 ms apart) before one arrived over the other relay")
        (other,) = relays
        assert pb.home_url == other and pb.home_region == "eu"
    finally:
        await pa.close()
        await pb.close()
        wa.close()
        wb.close()
        for r in (r1, r2):
            await r.stop()


async def test_sender_finds_the_receiver_on_another_relay_after_peer_gone(
    rc: RunningController, tmp_path: Path
) -> None:
    """The two ends disagree on the receiver's relay (here: the receiver's map does not list the
    new relay yet, as while a relay is being added): the new relay answers PEER_GONE and the sender
    moves to the next relay of the order, where the receiver is."""
    loop = asyncio.get_running_loop()
    old = await (await RunningRelay(rc, tmp_path / "r1", name="r1").create()).start()
    new = await (await RunningRelay(rc, tmp_path / "r2", name="r2").create()).start()
    fleet = await Fleet.create(rc, "acme", ["office"])
    a = await fleet.node("office", "a")
    for i in range(40):  # a receiver whose first choice is the new relay (each key: one in two)
        b = await fleet.node("office", f"b{i}")
        if rendezvous(b.wg_key, [old.url, new.url])[0] == new.url:
            break
    else:
        raise AssertionError("no key ranks the new relay first")
    wa, wb = _udp(), _udp()
    pa, pb = RelayPath(loop), RelayPath(loop)
    both = [RelayInfo(region="eu", url=r.url) for r in (old, new)]
    try:
        pa.configure(_state(a, b, wa.getsockname()[1], both))
        pb.configure(_state(b, a, wb.getsockname()[1], both[:1]))
        await asyncio.sleep(0)
        ep = pa.endpoint_for(b.wg_key.hex(), "eu")
        assert ep is not None
        sent = await _send_until_received(wa, wb, ep, 10)
        print(f"{sent} datagrams sent (50 ms apart) before one reached the receiver")
        m = await metrics(new)
        assert m['cvlan_relay_drops_total{reason="unknown_dest"}'] >= 1
        assert pb.home_url == old.url
    finally:
        await pa.close()
        await pb.close()
        wa.close()
        wb.close()
        for r in (old, new):
            await r.stop()
