"""Two relays in one region, two nodes behind endpoint-dependent NATs (so they can only talk through
a relay), real wireguard-go: the relay the pair uses is killed (SIGKILL, by the PID this test
started) in the middle of a ping, and the pair carries on over the region's other relay. About 60 s.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.harness.netns import Lab
from tests.harness.relaystack import RelayProc, peer_paths, start_relay
from tests.harness.stack import Node, start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e

PINGS = 150
INTERVAL = 0.2
RESUME_BOUND_S = 15.0


def _received(ping_output: str) -> set[int]:
    return {int(m) for m in re.findall(r"icmp_seq=(\d+)", ping_output)}


def test_pair_moves_to_the_regions_other_relay_when_theirs_is_killed(lab: Lab) -> None:
    ctl = start_controller(lab, poll_interval_s=2)
    relays = [start_relay(lab, ctl, "relay1"), start_relay(lab, ctl, "relay2")]
    _, join = ctl.token("acme", "office")
    a_ns, _ = lab.nat_host("a", "masquerade random")
    b_ns, _ = lab.nat_host("b", "masquerade random")
    a = start_node(lab, a_ns, "a", join)
    b = start_node(lab, b_ns, "b", join)
    a.wait_ready(peers=1)
    b.wait_ready(peers=1)
    wait_until(
        "relayed both ways, a pings b",
        lambda: (
            peer_paths(a) == {"b": "relay"}
            and peer_paths(b) == {"a": "relay"}
            and a.ns.ping(b.address(), wait=0.5)
        ),
        60,
        0.2,
    )
    try:
        _kill_and_count(a, b, relays)
    except AssertionError:
        for n in (a, b):  # what each cvland did with its relays
            lines = [x for x in n.dp.proc.output().splitlines() if "relay" in x or "peer" in x]
            print(f"--- {n.name} cvland\n" + "\n".join(lines[-40:]))
        raise


def _kill_and_count(a: Node, b: Node, relays: list[RelayProc]) -> None:
    before = [r.forwarded_bytes() for r in relays]
    a.ns.ping(b.address(), count=5, wait=0.5)
    grew = [r.forwarded_bytes() - x for r, x in zip(relays, before, strict=True)]
    used: RelayProc = relays[grew.index(max(grew))]
    other = relays[1 - relays.index(used)]
    assert max(grew) > 0

    ping = a.ns.spawn("ping", "ping", "-n", "-i", str(INTERVAL), "-W", "1", "-c", str(PINGS), b.address())
    time.sleep(3)
    assert used.proc is not None
    used.proc.stop(signal.SIGKILL)  # a crash: no goodbye to the nodes
    used.proc = None
    killed_at = other.forwarded_bytes()
    wait_until("the ping ends", lambda: not ping.alive(), PINGS * INTERVAL + 30, 0.5)

    got = _received(ping.output())
    lost = PINGS - len(got)
    print(f"{lost} of {PINGS} pings ({INTERVAL} s apart) lost around the relay kill")
    assert lost * INTERVAL < RESUME_BOUND_S, ping.output()[-2000:]
    tail = set(range(PINGS - 24, PINGS + 1))  # icmp_seq counts from 1: the last 5 s all answered
    assert tail <= got, sorted(tail - got)
    assert other.forwarded_bytes() > killed_at
