"""Two vrouters in a region, end to end (real wireguard-go, real cvlan-vrouter processes, network
namespaces): one is killed under a cross-region ping and traffic moves to the other one."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

import pytest

from tests.e2e.test_vrouter import delta, key_of, vrouter_key
from tests.harness.netns import Lab, Proc
from tests.harness.stack import Node, start_controller, start_node, wait_until
from tests.harness.vrouterstack import RunningVrouter, attach, cvlan_with_token, start_vrouter

pytestmark = pytest.mark.e2e

INTERVAL = 0.2
PINGS = 80
"""16 s of pings at INTERVAL: the kill comes after KILL_AFTER of them."""
KILL_AFTER = 10
PINGS_BACK = 125
"""25 s of pings while the killed vrouter restarts and, after the 10 s hold-down, takes traffic back."""
MAX_LOST = 60
"""The bound: traffic resumes within MAX_LOST * INTERVAL = 12 s (failover takes about 6 s)."""


def lost_pings(ping: Proc, timeout: float) -> tuple[int, int, str]:
    """(sent, lost, output) of a finished ping; the last one must have been answered."""
    ping.popen.wait(timeout=timeout)
    out = ping.output()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, got = int(m[1]), int(m[2])
    replies = [int(s) for s in re.findall(r"icmp_seq=(\d+)", out)]
    assert replies and replies[-1] == sent, f"the last pings were not answered:\n{out[-2000:]}"
    return sent, sent - got, out


def active_vrouter(n: Node, names: set[str]) -> str:
    """The vrouter peer the node routes its CVLAN subnet to now."""
    got = [p.name for p in n.status().peers if p.name in names and p.allowed_ips]
    assert len(got) == 1, f"{n.name}: exactly one active vrouter expected, got {got}"
    return got[0]


def kill(v: RunningVrouter) -> None:
    """The vrouter host dies: SIGKILL the vrouter process and the WireGuard engine it started."""
    engine_pid = int((v.state_dir / "engine.pid").read_text())
    os.kill(v.proc.pid, signal.SIGKILL)
    v.proc.popen.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.kill(engine_pid, signal.SIGKILL)


def test_killing_the_active_vrouter_of_a_region_moves_traffic_to_the_other(lab: Lab) -> None:
    ctl = start_controller(lab)
    east = {n: start_vrouter(lab, ctl, n, "east") for n in ("vr-east-1", "vr-east-2")}
    west = start_vrouter(lab, ctl, "vr-west", "west")
    join_east = cvlan_with_token(ctl, "acme", "office", "mesh", region="east")
    join_west = cvlan_with_token(ctl, "acme", "office", "mesh", region="west")
    for name in (*east, "vr-west"):
        attach(ctl, "acme", "office", name)
    a = start_node(lab, lab.public_host("a"), "a", join_east)
    b = start_node(lab, lab.public_host("b"), "b", join_west)
    a.wait_ready(peers=3)  # b and both east vrouters
    b.wait_ready(peers=2)  # a and vr-west
    for v in east.values():
        v.wait_served(cvlans=1, served=1, peers=3)  # a, the other east vrouter, vr-west
    west.wait_served(cvlans=1, served=1, peers=3)  # b and both east vrouters
    assert a.ns.wait_ping(b.address(), timeout=45), "a cannot reach b across regions"

    first = active_vrouter(a, set(east))
    dead, alive = east[first], next(v for n, v in east.items() if n != first)
    ping = a.ns.spawn("ping", "ping", "-n", "-c", str(PINGS), "-i", str(INTERVAL), "-W", "1", b.address())
    wait_until("the ping is under way", lambda: ping.output().count("bytes from") >= KILL_AFTER, 30)
    c0 = alive.counters()
    kill(dead)
    killed_at = time.monotonic()
    wait_until("a moved to the other vrouter", lambda: active_vrouter(a, set(east)) == alive.name, 20)
    print(f"a routes through {alive.name} {time.monotonic() - killed_at:.1f} s after {first} was killed")
    sent, lost, out = lost_pings(ping, PINGS * INTERVAL + 30)
    print(f"killed the active vrouter under a {INTERVAL} s ping: {lost} of {sent} pings lost")
    assert 0 < lost <= MAX_LOST, f"{lost} pings lost (bound {MAX_LOST}):\n{out[-2000:]}"
    # The traffic now crosses the surviving vrouter: a <-> it <-> vr-west <-> b.
    c1 = alive.counters()
    rx, tx = delta(c0, c1, key_of(a))
    assert rx >= 84 * (PINGS - KILL_AFTER - MAX_LOST) and tx > 0, f"{alive.name} <-> a: rx {rx}, tx {tx}"
    rx, tx = delta(c0, c1, vrouter_key(west))
    assert rx > 0 and tx > 0, f"{alive.name} <-> vr-west: rx {rx}, tx {tx}"
    assert b.ns.wait_ping(a.address(), timeout=10), "b reaches a through the surviving vrouter"

    # The killed vrouter comes back (from its state dir): after the hold-down, traffic returns to it.
    ping = a.ns.spawn(
        "ping2", "ping", "-n", "-c", str(PINGS_BACK), "-i", str(INTERVAL), "-W", "1", b.address()
    )
    dead.restart()
    back_at = time.monotonic()
    wait_until("a moved back to its first vrouter", lambda: active_vrouter(a, set(east)) == first, 45)
    print(f"a routes through {first} again {time.monotonic() - back_at:.1f} s after its restart")
    sent, lost, out = lost_pings(ping, PINGS_BACK * INTERVAL + 30)
    print(f"moving back under a {INTERVAL} s ping: {lost} of {sent} pings lost")
    assert lost <= MAX_LOST, f"{lost} pings lost moving back (bound {MAX_LOST}):\n{out[-2000:]}"
