"""The vrouter's apply step with fake backends: order, diffing, and a failed step taking nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from cvlan.common.clock import FakeClock
from cvlan.dataplane.engine import FakeEngine
from cvlan.dataplane.firewall import FakeFirewall, FirewallError
from cvlan.dataplane.router import FakeRouter
from cvlan.vrouter.daemon import Vrouter
from cvlan.vrouter.identity import Identity
from cvlan.vrouter.metrics import VrouterCollector, registry
from cvlan.vrouter.settings import VrouterSettings
from cvlan.wire.keys import KeyHex, generate_keypair

PRIV, _ = generate_keypair()
NODE = generate_keypair()[1]


def state(members: int = 1) -> dict[str, Any]:
    ms = [
        {
            "node_id": i,
            "name": f"n{i}",
            "key": generate_keypair()[1] if i else NODE,
            "address": f"100.64.0.{i + 1}/32",
            "endpoints": [],
            "region": "east",
            "hub": "vr",
            "hubs": [1],
            "served": True,
        }
        for i in range(members)
    ]
    return {
        "vrouter": {"id": 1, "name": "vr", "region": "east", "endpoint": "192.0.2.1:51900"},
        "cvlans": [
            {"id": 7, "tenant_id": 1, "name": "c", "subnet": "100.64.0.0/24", "mode": "hub", "members": ms}
        ],
        "vrouters": [],
    }


@pytest.fixture
def vr(tmp_path: Path) -> Vrouter:
    ident = Identity("https://ctl", "vr", "east", "192.0.2.1:51900", PRIV, tmp_path / "c", tmp_path / "k", "")
    fwd = tmp_path / "ip_forward"
    fwd.write_text("0\n")
    settings = VrouterSettings(state_dir=tmp_path, interface="hub0")
    return Vrouter(settings, ident, FakeEngine("hub0"), FakeRouter(), FakeFirewall(), ip_forward=fwd)


def test_apply_configures_everything_and_enables_forwarding(vr: Vrouter) -> None:
    vr.engine.start()
    vr.apply(state())
    eng, router, fw = vr.engine, vr.router, vr.firewall
    assert isinstance(eng, FakeEngine) and isinstance(router, FakeRouter) and isinstance(fw, FakeFirewall)
    assert eng.config is not None and [p.public_key for p in eng.config.peers] == [NODE]
    assert eng.config.listen_port == 51900, "the port of the registered endpoint"
    assert router.applied[-1].routes == ("100.64.0.0/24",)
    assert "100.64.0.0/24 : jump cvlan_7" in fw.ruleset
    assert vr.ip_forward.read_text().strip() == "1"
    assert (vr.settings.state_dir / "status.json").exists()


def test_same_state_twice_writes_no_new_peer_config(vr: Vrouter) -> None:
    vr.engine.start()
    vr.apply(state())
    vr.apply(state() | {})
    assert isinstance(vr.engine, FakeEngine) and len(vr.engine.bodies) == 1
    vr.apply(state(members=2))
    assert len(vr.engine.bodies) == 2 and "remove=true" not in vr.engine.bodies[1]


def test_refused_firewall_leaves_peers_and_forwarding_alone(vr: Vrouter) -> None:
    vr.engine.start()
    assert isinstance(vr.firewall, FakeFirewall) and isinstance(vr.engine, FakeEngine)
    vr.firewall.refuse_next = True
    with pytest.raises(FirewallError):
        vr.apply(state())
    assert vr.engine.bodies == [] and vr.ip_forward.read_text().strip() == "0"


def test_tick_moves_a_member_to_this_vrouter_when_its_preferred_one_dies(tmp_path: Path) -> None:
    clock = FakeClock()
    ident = Identity("https://ctl", "vr", "east", "192.0.2.1:51900", PRIV, tmp_path / "c", tmp_path / "k", "")
    fwd = tmp_path / "ip_forward"
    fwd.write_text("0\n")
    settings = VrouterSettings(state_dir=tmp_path, interface="hub0")
    eng = FakeEngine("hub0")
    vr = Vrouter(settings, ident, eng, FakeRouter(), FakeFirewall(), ip_forward=fwd, clock=clock)
    eng.start()
    other = generate_keypair()[1]
    s = state()
    s["cvlans"][0]["members"][0]["hubs"] = [2, 1]  # n0 prefers vr-2
    s["vrouters"] = [{"id": 2, "name": "vr-2", "region": "east", "key": other, "endpoint": "192.0.2.2:51900"}]
    vr.apply(s)

    def routes() -> dict[str, tuple[str, ...]]:
        assert eng.config is not None
        return {p.public_key: p.allowed_ips for p in eng.config.peers}

    assert routes() == {NODE: (), other: ("100.64.0.1/32",)}
    for _ in range(5):
        clock.advance(1)
        eng.state.peers[other].rx_bytes += 32
        assert not vr.tick(), "an alive peer changes nothing"
    moved_after = 0
    for tick in range(1, 16):  # vr-2 stops answering
        clock.advance(1)
        vr.tick()
        if routes() == {NODE: ("100.64.0.1/32",), other: ()}:
            moved_after = tick
            break
    assert 0 < moved_after <= 6, f"moved after {moved_after} ticks"
    assert any(f"public_key={other}\nremove=true" in b for b in eng.bodies), "vr-2 was probed first"
    assert vr.status()["dead_vrouters"] == ["vrouter:vr-2"]


async def test_metrics_sum_peer_counters_per_cvlan(vr: Vrouter) -> None:
    st = state(members=3)
    other = {
        **st["cvlans"][0],
        "id": 8,
        "subnet": "100.64.1.0/24",
        "members": [st["cvlans"][0]["members"].pop()],
    }
    other["members"][0]["address"] = "100.64.1.2/32"
    st["cvlans"].append(other)
    vr.engine.start()
    vr.apply(st)
    eng = vr.engine
    assert isinstance(eng, FakeEngine)
    c = VrouterCollector(vr)
    counts = {7: (100, 200), 8: (1000, 2000)}
    for cv in st["cvlans"]:
        for m in cv["members"]:
            eng.state.peers[KeyHex(m["key"])].rx_bytes, eng.state.peers[KeyHex(m["key"])].tx_bytes = counts[
                cv["id"]
            ]
    await c.refresh()
    text = generate_latest(registry(c)).decode()
    assert 'cvlan_vrouter_forwarded_bytes_total{cvlan="7",direction="rx"} 200.0' in text  # two members
    assert 'cvlan_vrouter_forwarded_bytes_total{cvlan="7",direction="tx"} 400.0' in text
    assert 'cvlan_vrouter_forwarded_bytes_total{cvlan="8",direction="rx"} 1000.0' in text
    assert 'cvlan_vrouter_peers{connected="no",kind="member"} 3.0' in text
    assert "cvlan_vrouter_cvlans 2.0" in text
