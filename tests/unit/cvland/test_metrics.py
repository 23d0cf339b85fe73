"""cvland's metrics are read from the daemon's state at scrape time: peers by path, handshake ages,
path changes, denied packets (fake engine and firewall; the e2e test scrapes a real cvland)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from cvlan.common.clock import FakeClock
from cvlan.cvland.metrics import CvlandCollector, registry
from cvlan.cvland.server import Serial
from cvlan.dataplane.engine import FakeEngine
from cvlan.dataplane.nflog import Flow
from cvlan.wire.ipc import DesiredState, PeerConfig
from cvlan.wire.keys import KeyHex, generate_keypair, short
from tests.unit.cvland.fakedaemon import fake_backends, started

PRIV, _ = generate_keypair()
_, K1 = generate_keypair()
_, K2 = generate_keypair()


def series(text: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, _, v in (
            line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#")
        )
    }


async def test_scrape_reports_the_daemons_state(tmp_path: Path) -> None:
    clock = FakeClock()
    engine = FakeEngine()
    d = started(tmp_path, fake_backends(["10.0.0.5"], engine), clock)
    peers = [
        PeerConfig(public_key=K1, allowed_ips=["100.64.0.6/32"], endpoints=["10.0.0.6:1"]),
        PeerConfig(public_key=K2, allowed_ips=["100.64.0.7/32"], endpoints=["10.0.0.7:1", "10.0.0.8:1"]),
    ]
    ds = DesiredState(
        version=4,
        node_id=7,
        private_key=PRIV,
        address="100.64.0.5/32",
        cvlan_subnet="100.64.0.0/24",
        peers=peers,
    )
    d.apply(ds)
    engine.state.peers[KeyHex(K1)].last_handshake = clock.now().timestamp() - 30
    clock.advance(6)  # K2 never handshook: the next tick moves it to its second candidate
    d.tick()
    d.denied_flows.add(Flow("100.64.0.6", "100.64.0.5", "tcp", 22), 3)
    d.denied_flows.drain()  # cvlan-ctrl took the flows: the counter keeps counting
    serial = Serial()
    try:
        c = CvlandCollector(d, serial)
        await c.refresh()
        got = series(generate_latest(registry(c)).decode())
    finally:
        serial.close()
        d.stop()
    assert got['cvlan_cvland_peers{path="direct"}'] == 1
    assert got['cvlan_cvland_peers{path="none"}'] == 1
    assert got[f'cvlan_cvland_peer_handshake_age_seconds{{peer="{short(KeyHex(K1))}"}}'] == 36
    assert not any(
        k.startswith("cvlan_cvland_peer_handshake_age_seconds{" + f'peer="{short(KeyHex(K2))}"') for k in got
    )
    assert got["cvlan_cvland_path_changes_total"] == 1
    assert got["cvlan_cvland_denied_packets_total"] == 3
    assert got["cvlan_cvland_applied_version"] == 4
    assert got["cvlan_cvland_down"] == 0
