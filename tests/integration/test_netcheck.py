"""netcheck against real STUN responders on loopback: answers, latency, "no NAT", and a relay that
does not answer."""

from __future__ import annotations

from cvlan.client import netcheck
from cvlan.relay.metrics import RelayMetrics
from cvlan.relay.stunserver import start_stun
from tests.harness.relay import free_udp_port


async def test_two_responders_on_own_addresses_mean_no_nat_and_a_silent_one_is_reported() -> None:
    m = RelayMetrics()
    p1, p2, silent = free_udp_port(), free_udp_port(), free_udp_port()
    t1 = await start_stun("127.0.0.1", p1, m)
    t2 = await start_stun("127.0.0.2", p2, m)
    try:
        targets = [
            netcheck.StunTarget("eu", "r1", f"127.0.0.1:{p1}"),
            netcheck.StunTarget("us", "r2", f"127.0.0.2:{p2}"),
            netcheck.StunTarget("ap", "r3", f"127.0.0.1:{silent}"),
        ]
        rep = await netcheck.run(targets, ["127.0.0.1"], timeout=0.3)
    finally:
        t1.close()
        t2.close()
    assert rep.udp and rep.ipv4
    assert rep.nat == "none"
    assert rep.mapped_endpoint == f"127.0.0.1:{rep.local_port}"
    by_region = {a.region: a for a in rep.answers}
    assert by_region["eu"].rtt_ms is not None and by_region["us"].rtt_ms is not None
    assert by_region["ap"].mapped == "" and by_region["ap"].error == "no answer"


async def test_no_answer_at_all_is_udp_blocked() -> None:
    rep = await netcheck.run(
        [netcheck.StunTarget("eu", "r1", f"127.0.0.1:{free_udp_port()}")], [], timeout=0.2
    )
    assert (rep.udp, rep.nat, rep.mapped_endpoint) == (False, "unknown", "")


async def test_stun_over_ipv4_and_ipv6_to_one_dual_stack_responder() -> None:
    m = RelayMetrics()
    port = free_udp_port()
    t = await start_stun("::", port, m)  # one dual-stack socket, as `--stun-listen '[::]:3478'` opens
    try:
        targets = [
            netcheck.StunTarget("eu", "r1", f"127.0.0.1:{port}"),
            netcheck.StunTarget("us", "r2", f"[::1]:{port}"),
        ]
        rep = await netcheck.run(targets, ["127.0.0.1"], timeout=0.5)
    finally:
        t.close()
    assert (rep.udp, rep.ipv4, rep.ipv6) == (True, True, True)
    assert rep.mapped_endpoint == f"127.0.0.1:{rep.local_port}"
    assert rep.mapped_endpoint_v6.startswith("[::1]:")
    assert [(a.region, a.family, a.server_ip) for a in rep.answers] == [
        ("eu", 4, "127.0.0.1"),
        ("us", 6, "::1"),
    ]
    assert all(a.rtt_ms is not None for a in rep.answers)
    assert rep.ipv6_address is False  # ::1 is not a global address
