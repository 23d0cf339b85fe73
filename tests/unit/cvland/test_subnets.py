"""The node's side of subnet routes and exit nodes: carriers, failover, the exit node's policy
routing plan, forwarding, and cvland's selection of an exit node (fake backends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvlan.common.clock import FakeClock
from cvlan.cvland.daemon import EXIT_FILE, Daemon
from cvlan.cvland.reconcile import exit_excludes, plan
from cvlan.cvland.server import handle_request
from cvlan.cvland.subnets import RouteFailover, carriers, exit_peer
from cvlan.dataplane.forwarding import FakeForwarding, SysctlForwarding
from cvlan.dataplane.hubchoice import CONFIRM_S, HUB_KEEPALIVE, SUSPECT_S
from cvlan.dataplane.policyroute import EXIT_FWMARK, FakePolicyRouter, exit_plan
from cvlan.dataplane.wgconfig import PeerState
from cvlan.wire.ipc import DesiredState, PeerConfig, RelayInfo
from cvlan.wire.keys import KeyHex, generate_keypair
from tests.unit.cvland.fakedaemon import fake_backends, started

PRIV, _ = generate_keypair()
KA, KB, KC = (generate_keypair()[1] for _ in range(3))
LAN = "10.1.0.0/24"


def peer(key: str, node_id: int, name: str, routes: list[str] = [], exit_node: bool = False) -> PeerConfig:  # noqa: B006
    ip = f"100.64.0.{node_id}/32"
    return PeerConfig(
        public_key=key,
        allowed_ips=[ip],
        endpoints=[f"192.0.2.{node_id}:51820"],
        name=name,
        node_id=node_id,
        routes=routes,
        exit_node=exit_node,
    )


def state(peers: list[PeerConfig], **kw: object) -> DesiredState:
    base: dict[str, object] = {
        "version": 1,
        "node_id": 9,
        "private_key": PRIV,
        "address": "100.64.0.9/32",
        "cvlan_subnet": "100.64.0.0/24",
        "peers": peers,
    }
    return DesiredState.model_validate({**base, **kw})


@pytest.mark.parametrize(
    ("peers", "own", "local", "want"),
    [
        ([peer(KA, 5, "a", [LAN])], [], [], {LAN: (KA,)}),
        ([peer(KB, 7, "b", [LAN]), peer(KA, 5, "a", [LAN])], [], [], {LAN: (KA, KB)}),  # node id order
        ([peer(KA, 5, "a", [LAN])], [LAN], [], {}),  # this node serves it itself
        ([peer(KA, 5, "a", [LAN])], [], ["10.1.0.0/16"], {}),  # the host is on that network
        ([peer(KA, 5, "a", [LAN, "10.2.0.0/24"])], [], ["10.1.0.128/25"], {"10.2.0.0/24": (KA,)}),
        ([peer(KA, 5, "a", exit_node=True)], [], [], {}),
    ],
)
def test_carriers(
    peers: list[PeerConfig], own: list[str], local: list[str], want: dict[str, tuple[str, ...]]
) -> None:
    assert carriers(state(peers, routes=own), local) == want


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("", ("", "")),
        ("a", (KA, "")),
        ("b", ("", "peer 'b' is not an approved exit node")),
        ("zz", ("", "no peer 'zz' in this CVLAN")),
    ],
)
def test_exit_peer(name: str, want: tuple[str, str]) -> None:
    ds = state([peer(KA, 5, "a", exit_node=True), peer(KB, 7, "b", [LAN])])
    assert exit_peer(ds, name) == want


def test_shape_puts_each_route_on_its_carrier_and_the_default_route_on_the_exit_node() -> None:
    ds = state([peer(KA, 5, "a", [LAN], exit_node=True), peer(KB, 7, "b", [LAN, "10.9.0.0/24"])])
    f = RouteFailover(FakeClock())
    f.set_state(ds)
    shaped = {p.name: p.allowed_ips for p in f.shape(ds, KA).peers}
    assert shaped == {
        "a": ["100.64.0.5/32", LAN, "0.0.0.0/0"],
        "b": ["100.64.0.7/32", "10.9.0.0/24"],
    }
    assert {p.name: p.allowed_ips for p in f.shape(ds).peers}["a"] == ["100.64.0.5/32", LAN]


def test_a_node_serving_a_shared_route_sends_fast_keepalives() -> None:
    ds = state([peer(KA, 5, "a", [LAN])], routes=[LAN])
    assert [p.keepalive for p in RouteFailover(FakeClock()).shape(ds).peers] == [HUB_KEEPALIVE]
    alone = state([peer(KA, 5, "a", ["10.2.0.0/24"])], routes=[LAN])
    assert [p.keepalive for p in RouteFailover(FakeClock()).shape(alone).peers] == [25]


def test_the_standby_takes_over_when_the_primary_goes_silent_and_traffic_moves_back_after_the_hold() -> None:
    clock = FakeClock()
    ds = state([peer(KA, 5, "a", [LAN]), peer(KB, 7, "b", [LAN])])
    f = RouteFailover(clock)
    f.set_state(ds)
    assert f.carrier(LAN) == KA
    rx = {KA: 100, KB: 100}

    def tick(alive: set[str]) -> bool:
        for k in alive:
            rx[k] += 32
        clock.advance(1.0)
        return f.observe({KeyHex(k): PeerState(public_key=KeyHex(k), rx_bytes=rx[k]) for k in (KA, KB)})

    tick({KA, KB})
    moved = [tick({KB}) for _ in range(int(SUSPECT_S + CONFIRM_S) + 2)]
    assert any(moved) and f.carrier(LAN) == KB
    assert f.take_probes() == {KA}  # the silent primary is probed with a fresh handshake
    assert {p.name: p.allowed_ips for p in f.shape(ds).peers}["b"] == ["100.64.0.7/32", LAN]
    for _ in range(3):
        tick({KA, KB})
    assert f.carrier(LAN) == KB  # a is back but not yet held
    for _ in range(12):
        tick({KA, KB})
    assert f.carrier(LAN) == KA


@pytest.mark.parametrize(
    ("excludes", "want"),
    [
        ([], ()),
        (["192.0.2.10", "192.0.2.10", "198.51.100.1"], ("192.0.2.10/32", "198.51.100.1/32")),
        (["fd00::1", "bad", "0.0.0.0"], ()),
    ],
)
def test_exit_plan_excludes(excludes: list[str], want: tuple[str, ...]) -> None:
    assert exit_plan("wg0", excludes).excludes == want


def test_exit_plan_commands_follow_wg_quick() -> None:
    got = exit_plan("wg0", ["192.0.2.10"]).commands()
    assert got == [
        ["route", "replace", "default", "dev", "wg0", "table", "51888"],
        ["rule", "add", "pref", "5200", "to", "192.0.2.10/32", "lookup", "main"],
        ["rule", "add", "pref", "5210", "lookup", "main", "suppress_prefixlength", "0"],
        ["rule", "add", "pref", "5220", "not", "fwmark", hex(EXIT_FWMARK), "lookup", "51888"],
    ]


def test_the_plan_keeps_the_controller_relays_and_peer_endpoints_out_of_the_exit_node() -> None:
    ds = state(
        [peer(KA, 5, "a", exit_node=True), peer(KB, 7, "b")],
        control_hosts=["203.0.113.1"],
        relays=[
            RelayInfo(region="r", url="wss://203.0.113.2:443/relay", stun="203.0.113.3:3478"),
            RelayInfo(region="s", url="wss://relay.example.net/", stun=""),
        ],
    )
    assert sorted(exit_excludes(ds)) == [
        "192.0.2.5",
        "192.0.2.7",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
    ]
    f = RouteFailover(FakeClock())
    f.set_state(ds)
    p = plan(f.shape(ds, KA), "wg0", lambda key: "")
    assert p.exit is not None and p.wg.fwmark == EXIT_FWMARK
    assert "0.0.0.0/0" not in p.router.routes  # the default route lives in the exit table only
    assert p.exit.excludes == (
        "192.0.2.5/32",
        "192.0.2.7/32",
        "203.0.113.1/32",
        "203.0.113.2/32",
        "203.0.113.3/32",
    )
    none = plan(f.shape(ds), "wg0", lambda key: "")
    assert none.exit is None and none.wg.fwmark == 0 and not none.forward


def test_a_node_with_approved_routes_forwards_and_masquerades() -> None:
    p = plan(state([], routes=[LAN]), "wg0", lambda key: "")
    assert p.forward and "ip daddr 10.1.0.0/24 accept" in p.ruleset and "masquerade" in p.ruleset
    assert 'iifname "wg0" ip daddr != 100.64.0.0/24 accept' not in p.ruleset
    exit_ = plan(state([], exit_node=True), "wg0", lambda key: "")
    assert exit_.forward and 'iifname "wg0" ip daddr != 100.64.0.0/24 accept' in exit_.ruleset
    assert "chain forward" not in plan(state([]), "wg0", lambda key: "").ruleset


def test_forwarding_puts_back_the_value_it_found(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    f = SysctlForwarding(tmp_path, sysctl)
    f.set(True)
    assert sysctl.read_text() == "1\n"
    SysctlForwarding(tmp_path, sysctl).restore()  # as a restarted cvland after a crash does
    assert sysctl.read_text() == "0\n" and not (tmp_path / "ip_forward.saved").exists()
    sysctl.write_text("1\n")  # a router that forwards anyway keeps forwarding
    f.set(True)
    f.set(False)
    assert sysctl.read_text() == "1\n"


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    b = fake_backends(policy=FakePolicyRouter(), forwarding=FakeForwarding())
    return started(tmp_path / "state", b)


def test_selecting_an_exit_node_routes_through_it_and_clearing_it_restores(daemon: Daemon) -> None:
    pol = daemon.b.policy
    assert isinstance(pol, FakePolicyRouter)
    daemon.apply(state([peer(KA, 5, "a", exit_node=True), peer(KB, 7, "b")]))
    assert pol.plan is None
    daemon.up("a")
    assert pol.plan is not None and pol.plan.excludes == ("192.0.2.5/32", "192.0.2.7/32")
    assert daemon.status().exit_node == "a" and daemon.status().exit_node_error == ""
    daemon.up("")
    assert pol.plan is None and not (daemon.state_dir / EXIT_FILE).exists()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("b", "up: exit node 'b': peer 'b' is not an approved exit node (see `cvlancli status`)"),
        ("nobody", "up: exit node 'nobody': no peer 'nobody' in this CVLAN (see `cvlancli status`)"),
    ],
)
def test_a_bad_exit_node_is_refused_and_nothing_changes(daemon: Daemon, name: str, error: str) -> None:
    daemon.apply(state([peer(KA, 5, "a", exit_node=True), peer(KB, 7, "b")]))
    daemon.up("a")
    ans = handle_request(daemon, json.dumps({"v": 1, "id": 1, "op": "up", "exit_node": name}))
    assert ans == {"v": 1, "id": 1, "ok": False, "error": error}
    assert daemon.exit_name == "a" and isinstance(daemon.b.policy, FakePolicyRouter)
    assert daemon.b.policy.plan is not None


def test_a_revoked_exit_node_stops_carrying_traffic_and_says_why(daemon: Daemon) -> None:
    daemon.apply(state([peer(KA, 5, "a", exit_node=True)]))
    daemon.up("a")
    daemon.apply(state([peer(KA, 5, "a")], version=2))
    assert isinstance(daemon.b.policy, FakePolicyRouter) and daemon.b.policy.plan is None
    assert daemon.status().exit_node_error == "peer 'a' is not an approved exit node"


def test_a_restart_removes_leftover_exit_routing_and_forwarding_then_restores_the_selection(
    tmp_path: Path,
) -> None:
    pol, fwd = FakePolicyRouter(), FakeForwarding()
    b = fake_backends(policy=pol, forwarding=fwd)
    d = started(tmp_path / "state", b)
    d.apply(state([peer(KA, 5, "a", exit_node=True)], routes=[LAN]))
    d.up("a")
    assert fwd.on and pol.plan is not None
    # A crash: the next cvland finds the host as the old one left it.
    d2 = Daemon("fake0", tmp_path / "state", b, FakeClock(), probe_s=5.0)
    d.stop()
    pol.plan, fwd.on, pol.teardowns = exit_plan("fake0", []), True, 0  # what a crashed run left
    d2.start()
    assert pol.teardowns == 1  # the leftover went before the saved state was applied again
    assert fwd.on and pol.plan is not None and d2.status().exit_node == "a"
    d2.stop()
    assert not fwd.on and pol.plan is None


def test_a_policy_naming_the_route_governs_what_is_forwarded_to_it() -> None:
    rules = [
        {"action": "accept", "src": ["100.64.0.3/32"], "proto": "tcp", "ports": ["22"], "dst": [LAN]},
        {"action": "accept", "src": ["100.64.0.0/24"], "proto": "", "ports": []},
    ]
    p = plan(state([], routes=[LAN], filter_rules=rules), "wg0", lambda key: "")
    forward = p.ruleset.split("chain forward")[1].split("chain postrouting")[0]
    assert (
        'iifname "wg0" ip saddr 100.64.0.3/32 ip daddr 10.1.0.0/24 meta l4proto tcp tcp dport { 22 } accept'
        in forward
    )
    assert f'iifname "wg0" ip daddr {LAN} log prefix' in forward  # the rest of the route is denied
    assert "ip daddr" not in p.ruleset.split("chain forward")[0]  # the input chain is the node's own
