"""The host's split-DNS configuration (resolv.conf saved and restored byte for byte, systemd-resolved
commands), node name labels and their clash suffixes, and which peers' names a policy lets a node
resolve. Under 1 s."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from cvlan.controller.mapper.dnsmap import may_reach, receiver_parts
from cvlan.dataplane.hostdns import MARKER, ResolvConf, Resolved, SplitDns
from cvlan.wire import dnsnames
from cvlan.wire.pb import node_pb2 as pb

ORIGINAL = (
    "# the host's own\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch example.test\noptions edns0\n"
)
CFG = SplitDns("cvlan0", "100.100.100.100", "office.acme.cvlan.internal", ("cvlan.internal",))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "etc" / "resolv.conf"
    p.parent.mkdir()
    p.write_text(ORIGINAL)
    return p


def test_resolv_conf_points_at_the_resolver_first_and_comes_back_byte_for_byte(
    conf: Path, tmp_path: Path
) -> None:
    rc = ResolvConf(conf, tmp_path)
    rc.apply(CFG)
    text = conf.read_text()
    assert text.startswith(MARKER)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [
        "nameserver 100.100.100.100",
        "nameserver 192.0.2.53",
        "nameserver 192.0.2.54",
        "search office.acme.cvlan.internal example.test",
        "options edns0",
    ]
    assert rc.upstreams() == ("192.0.2.53", "192.0.2.54")
    rc.apply(
        SplitDns("cvlan0", "100.100.100.100", "lab.acme.cvlan.internal", ())
    )  # a new zone: still one backup
    rc.restore()
    assert conf.read_text() == ORIGINAL
    assert not (tmp_path / "resolv.conf.orig.json").exists()
    rc.restore()  # idempotent
    assert conf.read_text() == ORIGINAL


def test_a_crashed_run_is_undone_by_the_next_start(conf: Path, tmp_path: Path) -> None:
    ResolvConf(conf, tmp_path).apply(CFG)  # then the process dies
    ResolvConf(conf, tmp_path).restore()  # the next start
    assert conf.read_text() == ORIGINAL


def test_a_symlinked_resolv_conf_is_a_symlink_again(tmp_path: Path) -> None:
    target = tmp_path / "stub-resolv.conf"
    target.write_text(ORIGINAL)
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    rc = ResolvConf(link, tmp_path / "state")
    (tmp_path / "state").mkdir()
    rc.apply(CFG)
    assert not link.is_symlink() and "nameserver 100.100.100.100" in link.read_text()
    assert target.read_text() == ORIGINAL, "the symlink's target was written"
    rc.restore()
    assert link.is_symlink() and os.readlink(link) == str(target)


def test_a_file_someone_else_rewrote_is_kept(conf: Path, tmp_path: Path) -> None:
    rc = ResolvConf(conf, tmp_path)
    rc.apply(CFG)
    conf.write_text("nameserver 198.51.100.1\n")  # e.g. a DHCP client
    rc.restore()
    assert conf.read_text() == "nameserver 198.51.100.1\n"
    assert not (tmp_path / "resolv.conf.orig.json").exists()


def test_a_missing_resolv_conf_is_missing_again(tmp_path: Path) -> None:
    p = tmp_path / "resolv.conf"
    rc = ResolvConf(p, tmp_path)
    rc.apply(CFG)
    assert p.exists()
    rc.restore()
    assert not p.exists()


def test_systemd_resolved_gets_per_link_settings_and_a_revert(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> None:
        calls.append(list(argv))

    up = tmp_path / "resolv.conf"
    up.write_text("nameserver 192.0.2.53\n")
    r = Resolved(run, up)
    r.apply(
        SplitDns(
            "cvlan0", "100.100.100.100", "office.acme.cvlan.internal", ("cvlan.internal", "corp.example")
        )
    )
    r.restore()
    assert calls == [
        ["resolvectl", "dns", "cvlan0", "100.100.100.100"],
        ["resolvectl", "domain", "cvlan0", "office.acme.cvlan.internal", "~cvlan.internal", "~corp.example"],
        ["resolvectl", "default-route", "cvlan0", "false"],
        ["resolvectl", "revert", "cvlan0"],
    ]
    assert r.upstreams() == ("192.0.2.53",)


@pytest.mark.parametrize(
    ("name", "label"),
    [("web1", "web1"), ("Web_1", "web-1"), ("a.b", "a-b"), ("x" * 70, "x" * 63), ("--", "x")],
)
def test_labels(name: str, label: str) -> None:
    assert dnsnames.label(name) == label


def test_a_clashing_label_gets_the_node_id_whoever_came_first_keeps_it() -> None:
    assert dnsnames.assign_labels([(7, "Web_1"), (3, "web-1"), (9, "db")]) == {
        3: "web-1",
        7: "web-1-7",
        9: "db",
    }
    # Deterministic: the same members in another order give the same names.
    assert dnsnames.assign_labels([(9, "db"), (7, "Web_1"), (3, "web-1")]) == {
        3: "web-1",
        7: "web-1-7",
        9: "db",
    }


def _rule(action: str, src: list[str], proto: str = "", ports: Sequence[str] = ()) -> pb.FilterRule:
    return pb.FilterRule(action=action, src=src, proto=proto, ports=list(ports))


@pytest.mark.parametrize(
    ("rules", "src", "reach"),
    [
        ([], "100.64.0.1", True),
        ([_rule("accept", ["100.64.0.1/32"], "tcp", ["22"])], "100.64.0.1", True),
        ([_rule("accept", ["100.64.0.1/32"])], "100.64.0.2", False),
        ([_rule("drop", ["100.64.0.0/24"])], "100.64.0.1", False),
        (
            [_rule("drop", ["100.64.0.0/24"], "tcp", ["22"]), _rule("accept", ["100.64.0.0/24"])],
            "100.64.0.1",
            True,
        ),
        ([_rule("drop", ["100.64.0.1/32"]), _rule("accept", ["100.64.0.0/24"])], "100.64.0.1", False),
        # a forward rule (route:CIDR, internet) lets traffic through the node, not to it
        ([pb.FilterRule(action="accept", src=["100.64.0.0/24"], dst=["0.0.0.0/0"])], "100.64.0.1", False),
        ([pb.FilterRule(action="accept", src=["100.64.0.0/24"], dst=["10.1.0.0/24"])], "100.64.0.1", False),
    ],
)
def test_may_reach_follows_the_first_matching_rule(rules: list[pb.FilterRule], src: str, reach: bool) -> None:
    assert may_reach(rules, src) is reach


class _M:
    def __init__(self, node_id: int, address: str, rules: list[pb.FilterRule]) -> None:
        self.node_id, self.address, self.filter_rules = node_id, address, rules


def test_a_node_resolves_only_the_peers_it_may_reach() -> None:
    only_1 = [_rule("accept", ["100.64.0.1/32"])]
    members = [_M(1, "100.64.0.1", []), _M(2, "100.64.0.2", only_1), _M(3, "100.64.0.3", only_1)]
    parts = receiver_parts(members)
    assert parts[1].all_peers
    assert not parts[2].all_peers and list(parts[2].peer_ids) == [1]
    assert list(parts[3].peer_ids) == [1]
    no_policy = receiver_parts([_M(1, "100.64.0.1", []), _M(2, "100.64.0.2", [])])
    assert all(p.all_peers for p in no_policy.values())


async def test_the_host_is_not_pointed_at_a_resolver_that_does_not_listen(conf: Path, tmp_path: Path) -> None:
    """The resolver's address is not on any interface here (no WireGuard link): binding fails, the
    status says why, and resolv.conf is left as it was."""
    import asyncio

    from cvlan.cvland.dnsservice import DnsService
    from cvlan.wire.ipc import DesiredState, DnsHost, DnsState

    svc = DnsService(asyncio.get_running_loop(), ResolvConf(conf, tmp_path), tmp_path, conf)
    zone = "office.acme.cvlan.internal"
    ds = DesiredState(
        version=1,
        node_id=1,
        private_key="11" * 32,
        address="100.64.0.1/32",
        cvlan_subnet="100.64.0.0/24",
        dns=DnsState(
            zone=zone, resolver="100.100.100.100", hosts=[DnsHost(name=f"n0.{zone}", address="100.64.0.1")]
        ),
    )
    await asyncio.to_thread(svc.apply, ds, "cvlan0")
    st = svc.status()
    assert st is not None and st.resolver == "" and st.host_config == "none"
    assert st.error.startswith("resolver on 100.100.100.100:53:")
    assert conf.read_text() == ORIGINAL
    await asyncio.to_thread(svc.teardown)
    assert svc.status() is None and conf.read_text() == ORIGINAL


def test_the_packages_restore_dns_call_undoes_a_crashed_run(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the client package's prerm runs on uninstall (cvland --restore-dns): the host's own
    resolv.conf again, byte for byte, after a cvland that died with it rewritten; twice is harmless."""
    from cvlan.cvland.__main__ import main

    state = tmp_path / "state"
    state.mkdir()
    ResolvConf(conf, state).apply(CFG)  # then the process dies
    monkeypatch.setenv("CVLAND_RESOLV_CONF", str(conf))
    assert main(["--state-dir", str(state), "--restore-dns"]) == 0
    assert conf.read_text() == ORIGINAL
    assert main(["--state-dir", str(state), "--restore-dns"]) == 0
    assert conf.read_text() == ORIGINAL
