"""cvland on real wireguard-go: crash leftovers, restart from saved state, policy, clean teardown."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from cvlan.wire.ipc import DesiredState, PeerConfig
from cvlan.wire.keys import generate_keypair
from tests.harness import ipcclient
from tests.harness.cvland import Dataplane, start_cvland
from tests.harness.netns import Lab, Netns

pytestmark = pytest.mark.e2e

SUBNET = "100.64.9.0/24"


def pair(lab: Lab) -> tuple[Netns, Netns, Dataplane, Dataplane, DesiredState, DesiredState]:
    a, b = lab.lan_pair()
    da, db = start_cvland(lab, a), start_cvland(lab, b)
    (pa, ka), (pb, kb) = generate_keypair(), generate_keypair()
    sa = DesiredState(
        version=1,
        node_id=1,
        private_key=pa,
        address="100.64.9.1/32",
        cvlan_subnet=SUBNET,
        peers=[PeerConfig(public_key=kb, allowed_ips=["100.64.9.2/32"], endpoints=["10.201.0.2:51820"])],
    )
    sb = DesiredState(
        version=1,
        node_id=2,
        private_key=pb,
        address="100.64.9.2/32",
        cvlan_subnet=SUBNET,
        peers=[PeerConfig(public_key=ka, allowed_ips=["100.64.9.1/32"], endpoints=["10.201.0.1:51820"])],
    )
    assert ipcclient.apply(da.socket, sa)["ok"] and ipcclient.apply(db.socket, sb)["ok"]
    assert a.wait_ping("100.64.9.2", timeout=30)
    return a, b, da, db, sa, sb


def link_exists(ns: Netns, ifname: str) -> bool:
    return ns.run("ip", "link", "show", ifname).returncode == 0


def engine_pid(dp: Dataplane) -> int:
    pid = json.loads((dp.state_dir / "run.json").read_text())["pid"]
    assert isinstance(pid, int)
    return pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of a killed cvland is gone for our purposes
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_socket_is_owner_only_and_reapply_is_harmless(lab: Lab) -> None:
    a, _, da, _, sa, _ = pair(lab)
    assert stat.S_IMODE(da.socket.stat().st_mode) == 0o600
    assert ipcclient.apply(da.socket, sa)["applied_version"] == 1
    assert a.ping("100.64.9.2", count=3)


def test_crashed_cvland_leftovers_are_removed_and_saved_state_reapplied(lab: Lab) -> None:
    a, b, da, _, _, _ = pair(lab)
    old_engine = engine_pid(da)
    da.proc.stop(sig=signal.SIGKILL)  # a crash: no teardown ran
    assert alive(old_engine) and link_exists(a, da.ifname)
    da2 = start_cvland(lab, a, ifname=da.ifname, state_dir=da.state_dir)
    assert wait_gone(old_engine), "the previous run's wireguard-go was not stopped"
    assert engine_pid(da2) != old_engine
    # No apply over IPC: the saved desired state brings the tunnel back by itself.
    assert a.wait_ping("100.64.9.2", timeout=30)
    assert b.wait_ping("100.64.9.1", timeout=10)
    assert da2.status().applied_version == 1


def test_filter_rules_drop_and_count_what_they_do_not_allow(lab: Lab) -> None:
    a, b, da, _, sa, _ = pair(lab)
    only_ssh = sa.model_copy(update={"version": 2, "filter_rules": [{"proto": "tcp", "ports": [22]}]})
    assert ipcclient.apply(da.socket, only_ssh)["ok"]
    assert not b.ping("100.64.9.1", count=2), "B's ping reached A although A allows only tcp/22"
    out = a.exec("nft", "-j", "list", "counter", "inet", f"cvlan-{da.ifname}", "denied")
    counters = [i["counter"] for i in json.loads(out)["nftables"] if "counter" in i]
    assert counters[0]["packets"] >= 2
    assert a.ping("100.64.9.2", count=2), "replies to A's own traffic must pass"
    assert ipcclient.apply(da.socket, sa.model_copy(update={"version": 3}))["ok"]
    assert b.ping("100.64.9.1", count=2)


def test_sigterm_tears_everything_down(lab: Lab) -> None:
    a, _, da, _, _, _ = pair(lab)
    pid = engine_pid(da)
    assert da.proc.stop(sig=signal.SIGTERM) == 0
    assert wait_gone(pid)
    assert not link_exists(a, da.ifname)
    assert a.run("nft", "list", "table", "inet", f"cvlan-{da.ifname}").returncode != 0
    assert not Path(f"/var/run/wireguard/{da.ifname}.sock").exists()
    assert not da.socket.exists()


def test_bad_state_is_refused_and_changes_nothing(lab: Lab) -> None:
    a, _, da, _, sa, _ = pair(lab)
    bad = sa.model_dump()
    bad.update(version=2, address="10.9.9.9/32")
    ans = ipcclient.request(da.socket, "apply", state=bad)
    assert ans["ok"] is False and "outside cvlan_subnet" in ans["error"]
    assert da.status().applied_version == 1
    assert a.ping("100.64.9.2", count=2)


def test_interface_name_in_use_elsewhere_is_a_clear_error(lab: Lab) -> None:
    a, b, da, _, _, _ = pair(lab)
    other = lab.ns("c")
    with pytest.raises(RuntimeError, match="another WireGuard process serves"):
        start_cvland(lab, other, ifname=da.ifname)
    assert a.ping("100.64.9.2", count=1)
