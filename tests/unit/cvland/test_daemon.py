"""cvland's core with fake backends: apply by diff, idempotence, bad input changes nothing, IPC answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvlan.common.clock import FakeClock
from cvlan.cvland.daemon import DESIRED_FILE, Daemon
from cvlan.cvland.reconcile import InvalidState
from cvlan.cvland.server import handle_request
from cvlan.dataplane.engine import EngineError, FakeEngine
from cvlan.dataplane.firewall import FakeFirewall
from cvlan.dataplane.router import FakeRouter, RouterConfig
from cvlan.wire.ipc import DesiredState, PeerConfig
from cvlan.wire.keys import generate_keypair
from tests.unit.cvland.fakedaemon import fake_backends, started

PRIV, _ = generate_keypair()
_, K1 = generate_keypair()
_, K2 = generate_keypair()


def state(version: int = 1, peers: list[PeerConfig] | None = None, **kw: object) -> DesiredState:
    base: dict[str, object] = {
        "version": version,
        "node_id": 7,
        "private_key": PRIV,
        "address": "100.64.0.5/32",
        "cvlan_subnet": "100.64.0.0/24",
        "peers": peers
        if peers is not None
        else [PeerConfig(public_key=K1, allowed_ips=["100.64.0.6/32"], endpoints=["10.0.0.6:51820"])],
    }
    base.update(kw)
    return DesiredState.model_validate(base)


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return started(tmp_path / "state", fake_backends(["10.0.0.5", "100.64.0.5"]))


def fakes(d: Daemon) -> tuple[FakeEngine, FakeRouter, FakeFirewall]:
    assert isinstance(d.b.engine, FakeEngine) and isinstance(d.b.router, FakeRouter)
    assert isinstance(d.b.firewall, FakeFirewall)
    return d.b.engine, d.b.router, d.b.firewall


def test_apply_configures_all_backends(daemon: Daemon) -> None:
    eng, rt, fw = fakes(daemon)
    assert daemon.apply(state()) == 1
    assert eng.config is not None and eng.config.peers[0].endpoint == "10.0.0.6:51820"
    assert rt.applied[-1] == RouterConfig("fake0", "100.64.0.5/32", 1280, ("100.64.0.0/24",))
    assert 'iifname "fake0" ip saddr 100.64.0.0/24 accept' in fw.ruleset


def test_reapplying_the_same_state_changes_nothing(daemon: Daemon) -> None:
    eng, _, fw = fakes(daemon)
    daemon.apply(state())
    daemon.apply(state())
    assert eng.bodies[1] == "" and fw.loads == 1


def test_only_the_changed_peer_is_written(daemon: Daemon) -> None:
    eng, _, _ = fakes(daemon)
    daemon.apply(state())
    peers = [
        PeerConfig(public_key=K1, allowed_ips=["100.64.0.6/32"], endpoints=["10.0.0.6:51820"]),
        PeerConfig(public_key=K2, allowed_ips=["100.64.0.7/32", "10.50.0.0/16"]),
    ]
    daemon.apply(state(2, peers))
    assert K1 not in eng.bodies[-1] and f"public_key={K2}" in eng.bodies[-1]
    _, rt, _ = fakes(daemon)
    assert rt.applied[-1].routes == ("10.50.0.0/16", "100.64.0.0/24")  # a vrouter subnet gets a route
    daemon.apply(state(3, peers[1:]))
    assert f"public_key={K1}\nremove=true" in eng.bodies[-1]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"private_key": "abc"}, "private_key: expected 64 hex characters"),
        ({"address": "10.1.1.1/32"}, "is outside cvlan_subnet"),
        ({"mtu": 100}, "mtu 100: expected 576-9000"),
        ({"filter_rules": [{"proto": "gre"}]}, "filter rule 0: proto 'gre'"),
        (
            {"peers": [PeerConfig(public_key=K1, allowed_ips=["x"])]},
            "does not appear to be an IPv4 or IPv6 network",
        ),
        ({"peers": [PeerConfig(public_key=K1, allowed_ips=[], endpoints=["h:1"])]}, "is not an IP address"),
    ],
)
def test_invalid_state_changes_nothing(daemon: Daemon, kw: dict[str, object], message: str) -> None:
    eng, rt, fw = fakes(daemon)
    daemon.apply(state())
    before = (eng.config, len(rt.applied), fw.ruleset, daemon.desired)
    with pytest.raises(InvalidState, match=message):
        daemon.apply(state(2, **kw))
    assert (eng.config, len(rt.applied), fw.ruleset, daemon.desired) == before


def test_refused_firewall_leaves_engine_untouched(daemon: Daemon) -> None:
    eng, _, fw = fakes(daemon)
    daemon.apply(state())
    fw.refuse_next = True
    with pytest.raises(Exception, match="refused"):
        daemon.apply(state(2, filter_rules=[{"proto": "icmp"}]))
    assert len(eng.bodies) == 1 and daemon.desired is not None and daemon.desired.version == 1


def test_engine_failure_forces_full_replace_next_time(daemon: Daemon) -> None:
    eng, _, _ = fakes(daemon)
    daemon.apply(state())
    eng.fail_next = RuntimeError("set: errno=22")
    with pytest.raises(RuntimeError):
        daemon.apply(state(2, peers=[]))
    daemon.apply(state(2, peers=[]))
    assert "replace_peers=true" in eng.bodies[-1]


def test_desired_state_is_saved_0600_and_reapplied_on_start(daemon: Daemon, tmp_path: Path) -> None:
    daemon.apply(state(4))
    saved = tmp_path / "state" / DESIRED_FILE
    assert saved.stat().st_mode & 0o777 == 0o600
    daemon.stop()
    d2 = started(tmp_path / "state", fake_backends())
    assert d2.desired is not None and d2.desired.version == 4 and fakes(d2)[0].config is not None


def test_a_second_daemon_on_the_same_state_dir_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    d2 = Daemon("fake0", tmp_path / "state", fake_backends(), FakeClock(), probe_s=5.0)
    with pytest.raises(EngineError, match="in use by another running cvland"):
        d2.start()
    d2.stop()
    assert fakes(daemon)[0].running, "the refused daemon must not touch the running one"


def test_status_reports_peers_and_local_endpoints(daemon: Daemon) -> None:
    daemon.apply(state(peers=[PeerConfig(public_key=K1, allowed_ips=["100.64.0.6/32"], name="bob")]))
    eng, _, _ = fakes(daemon)
    ps = eng.state.peers[K1]
    ps.rx_bytes, ps.tx_bytes, ps.endpoint = 10, 20, "10.0.0.6:51820"
    ps.last_handshake = FakeClock().now().timestamp() - 10
    st = daemon.status()
    assert st.interface == "fake0" and st.applied_version == 1 and st.listen_port == 51820
    assert st.local_endpoints == ["10.0.0.5:51820"]  # the overlay address is not an endpoint
    p = st.peers[0]
    assert (p.name, p.rx_bytes, p.tx_bytes, p.endpoint, p.path) == ("bob", 10, 20, "10.0.0.6:51820", "direct")


def test_tick_rotates_endpoints_and_restarts_a_dead_engine(daemon: Daemon) -> None:
    eng, _, _ = fakes(daemon)
    peers = [PeerConfig(public_key=K1, allowed_ips=["100.64.0.6/32"], endpoints=["10.0.0.6:1", "10.0.0.7:1"])]
    daemon.apply(state(peers=peers))
    assert isinstance(daemon.clock, FakeClock)
    daemon.clock.advance(6)
    daemon.tick()
    assert eng.config is not None and eng.config.peers[0].endpoint == "10.0.0.7:1"
    eng.running = False
    daemon.tick()
    assert eng.running and "replace_peers=true" in eng.bodies[-1]


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_ipc_ops(daemon: Daemon) -> None:
    assert handle_request(daemon, line({"v": 1, "id": 1, "op": "ping"})) == {"v": 1, "id": 1, "ok": True}
    ans = handle_request(daemon, line({"v": 1, "id": 2, "op": "apply", "state": state(9).model_dump()}))
    assert ans == {"v": 1, "id": 2, "ok": True, "applied_version": 9}
    st = handle_request(daemon, line({"v": 1, "id": 3, "op": "status"}))
    assert st["ok"] and st["applied_version"] == 9 and st["interface"] == "fake0"


@pytest.mark.parametrize(
    ("req", "error"),
    [
        (b"not json", "bad request: "),
        (line([1]), "bad request: request must be a JSON object"),
        (line({"v": 2, "id": 1, "op": "ping"}), "unsupported ipc version 2"),
        (line({"v": 1, "id": 1, "op": "reboot"}), "unknown op 'reboot'"),
        (
            line({"v": 1, "id": 1, "op": "apply", "state": {"version": 1}}),
            "apply: invalid state field node_id",
        ),
        (
            line({"v": 1, "id": 1, "op": "apply", "state": state(mtu=1).model_dump()}),
            "apply: mtu 1: expected",
        ),
    ],
)
def test_ipc_errors_are_one_line(daemon: Daemon, req: bytes, error: str) -> None:
    ans = handle_request(daemon, req)
    assert ans["ok"] is False and ans["error"].startswith(error) and "\n" not in ans["error"]


def test_no_local_endpoints_until_the_first_state_sets_the_port(daemon: Daemon) -> None:
    eng, _, _ = fakes(daemon)
    eng.state.listen_port = 40123  # the engine's own random port before the first desired state
    assert daemon.status().local_endpoints == []
    daemon.apply(state())
    assert daemon.status().local_endpoints == ["10.0.0.5:51820"]


def test_new_candidates_do_not_overwrite_where_wireguard_roamed(tmp_path: Path) -> None:
    # Peer K1 is behind a NAT. Its handshake moved WireGuard to the NAT's address; the map update with
    # its corrected candidate comes before the next tick. The endpoint must stay on the NAT's address.
    clock = FakeClock()
    d = started(tmp_path / "state", fake_backends(), clock)  # no relay: PathSelector over NoRelayPaths
    eng, _, _ = fakes(d)
    nat_peer = PeerConfig(public_key=K1, allowed_ips=["100.64.0.6/32"], endpoints=["10.1.0.6:40123"])
    d.apply(state(peers=[nat_peer]))
    clock.advance(1)
    ps = eng.state.peers[K1]
    ps.endpoint, ps.last_handshake = "198.51.100.7:1024", clock.now().timestamp()
    n = len(eng.bodies)
    d.apply(state(2, [nat_peer.model_copy(update={"endpoints": ["10.1.0.6:51820"]})]))
    assert not any("endpoint=10.1.0.6:51820" in body for body in eng.bodies[n:])
    assert eng.config is not None and eng.config.peers[0].endpoint == "198.51.100.7:1024"
    d.tick()
    assert eng.config.peers[0].endpoint == "198.51.100.7:1024"
    assert d.status().peers[0].path == "direct"
    d.stop()


def test_two_vrouters_only_the_active_one_carries_the_subnet_and_it_fails_over(tmp_path: Path) -> None:
    clock = FakeClock()
    d = started(tmp_path / "state", fake_backends(["10.0.0.5"]), clock)
    (_, v1), (_, v2) = generate_keypair(), generate_keypair()
    hubs = [
        PeerConfig(public_key=v, allowed_ips=["100.64.0.0/24"], endpoints=[ep], via_vrouter=True)
        for v, ep in ((v1, "192.0.2.1:51900"), (v2, "192.0.2.2:51900"))
    ]
    d.apply(state(peers=[PeerConfig(public_key=K1, allowed_ips=[], endpoints=[]), *hubs]))
    eng, _, _ = fakes(d)

    def routes() -> dict[str, tuple[str, ...]]:
        assert eng.config is not None
        return {p.public_key: p.allowed_ips for p in eng.config.peers if p.public_key != K1}

    assert routes() == {v1: ("100.64.0.0/24",), v2: ()}, "the first preference only; the other is standby"
    for _ in range(5):  # both vrouters' keepalives arrive
        clock.advance(1)
        for v in (v1, v2):
            eng.state.peers[v].rx_bytes += 32
        d.tick()
    assert routes()[v1] == ("100.64.0.0/24",)
    moved_after = 0
    for tick in range(1, 16):  # v1 is killed: only v2 is heard from
        clock.advance(1)
        eng.state.peers[v2].rx_bytes += 32
        d.tick()
        if routes() == {v1: (), v2: ("100.64.0.0/24",)}:
            moved_after = tick
            break
    assert 0 < moved_after <= 6, f"failover after {moved_after} ticks"
    assert any(f"public_key={v1}\nremove=true" in body for body in eng.bodies), "v1 was probed first"
    for _ in range(8):  # v1 is back, but not for the hold-down time yet: no move back
        clock.advance(1)
        for v in (v1, v2):
            eng.state.peers[v].rx_bytes += 32
        d.tick()
    assert routes()[v2] == ("100.64.0.0/24",)
    for _ in range(4):
        clock.advance(1)
        for v in (v1, v2):
            eng.state.peers[v].rx_bytes += 32
        d.tick()
    assert routes() == {v1: ("100.64.0.0/24",), v2: ()}, "back to the first preference after the hold"


def test_down_removes_the_tunnel_keeps_the_state_and_stays_down_across_a_restart(
    daemon: Daemon, tmp_path: Path
) -> None:
    eng, rt, fw = fakes(daemon)
    daemon.apply(state(4))
    st = handle_request(daemon, line({"v": 1, "id": 1, "op": "down"}))
    assert st["ok"] and st["down"] is True and st["address"] == "100.64.0.5/32" and st["node_id"] == 7
    assert not eng.running and rt.torn_down and fw.ruleset == ""
    # A new map while down is kept for later, not put on the host; ticks do not restart the engine.
    assert daemon.apply(state(5)) == 5
    daemon.tick()
    assert not eng.running and eng.config is None
    daemon.stop()

    d2 = started(tmp_path / "state", fake_backends())
    eng2, rt2, _ = fakes(d2)
    assert d2.status().down and not eng2.running and rt2.applied == []

    st = handle_request(d2, line({"v": 1, "id": 2, "op": "up"}))
    assert st["ok"] and st["down"] is False and st["applied_version"] == 5
    assert eng2.running and eng2.config is not None
    assert rt2.applied[-1] == RouterConfig("fake0", "100.64.0.5/32", 1280, ("100.64.0.0/24",))
    assert handle_request(d2, line({"v": 1, "id": 3, "op": "up"}))["down"] is False  # idempotent
    d2.stop()
