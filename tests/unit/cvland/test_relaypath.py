"""PathSelector: direct first, relay after the probe period, direct retries with backoff, roaming."""

from __future__ import annotations

from cvlan.common.clock import FakeClock
from cvlan.cvland.paths import Choice
from cvlan.cvland.relaypath import PathSelector

K = "aa" * 32
PROXY = "127.0.0.1:40000"


class FakeRelay:
    """A relay path that exists for region "eu" only."""

    def __init__(self) -> None:
        self.generation = 0
        self.probes: list[tuple[str, ...]] = []
        self.answers: dict[str, str] = {}

    def request_probe(self, peer: str, candidates: tuple[str, ...]) -> None:
        self.probes.append(candidates)

    def direct_ok(self, peer: str) -> str | None:
        return self.answers.pop(peer, None)

    def available(self, relay_region: str) -> bool:
        return relay_region == "eu"

    def endpoint_for(self, peer: str, relay_region: str) -> str | None:
        return PROXY if relay_region == "eu" else None

    def is_proxy(self, endpoint: str) -> bool:
        return endpoint == PROXY


def _sel(
    clock: FakeClock, cands: tuple[str, ...] = ("198.51.100.2:51820",), region: str = "eu"
) -> PathSelector:
    s = PathSelector(clock, FakeRelay(), probe_s=5, retry_s=15, retry_max_s=60)
    s.set_peers({K: (cands, region)})
    return s


def _handshake(clock: FakeClock) -> float:
    return clock.now().timestamp()


def test_direct_first_then_relay_after_probe_period() -> None:
    clock = FakeClock()
    s = _sel(clock)
    assert s.choice(K).endpoint == "198.51.100.2:51820"
    clock.advance(4)
    assert not s.observe(K, 0)
    clock.advance(2)
    assert s.observe(K, 0)
    assert s.choice(K).endpoint == PROXY and s.choice(K).path == "relay"
    assert s.take_recreate() == {K} and s.take_recreate() == set()


def test_new_candidates_during_direct_attempt_do_not_delay_relay() -> None:
    """The peer's STUN mapping arriving while we still try its LAN address must not restart the
    probe period: the relay takes over probe_s after the first attempt began."""
    clock = FakeClock()
    s = _sel(clock, cands=("10.200.2.2:51820",))
    clock.advance(3)
    s.set_peers({K: (("10.200.2.2:51820", "198.51.100.6:40123"), "eu")})
    clock.advance(2.5)
    assert s.observe(K, 0)
    assert s.choice(K).path == "relay"


def test_direct_handshake_keeps_direct() -> None:
    clock = FakeClock()
    s = _sel(clock)
    clock.advance(1)
    assert not s.observe(K, _handshake(clock))
    clock.advance(100)
    assert not s.observe(K, _handshake(clock) - 50)
    assert s.choice(K).path == "direct"


def _relayed(clock: FakeClock) -> tuple[PathSelector, FakeRelay]:
    relay = FakeRelay()
    s = PathSelector(clock, relay, probe_s=5, retry_s=15, retry_max_s=60, probe_every_s=5)
    s.set_peers({K: (("198.51.100.2:51820",), "eu")})
    clock.advance(6)
    s.observe(K, 0)  # -> relay
    clock.advance(1)
    s.observe(K, _handshake(clock))  # relay works
    s.take_recreate()
    return s, relay


def test_relayed_peer_probes_direct_without_moving_until_an_answer() -> None:
    clock = FakeClock()
    s, relay = _relayed(clock)
    for _ in range(4):
        clock.advance(5)
        assert not s.observe(K, _handshake(clock))
    assert len(relay.probes) >= 4 and relay.probes[0] == ("198.51.100.2:51820",)
    assert s.choice(K).endpoint == PROXY and s.take_recreate() == set()
    relay.answers[K] = "198.51.100.2:51820"
    clock.advance(1)
    assert s.observe(K, _handshake(clock) - 1)
    assert s.choice(K).endpoint == "198.51.100.2:51820" and s.take_recreate() == {K}
    clock.advance(1)
    assert not s.observe(K, _handshake(clock))  # the direct handshake completed
    assert s.choice(K).path == "direct"


def test_answer_without_handshake_backs_off_before_moving_again() -> None:
    clock = FakeClock()
    s, relay = _relayed(clock)
    relay.answers[K] = "198.51.100.2:51820"
    clock.advance(1)
    assert s.observe(K, _handshake(clock) - 1)  # -> direct
    clock.advance(6)
    assert s.observe(K, 0)  # no handshake: back to relay
    assert s.choice(K).endpoint == PROXY
    clock.advance(1)
    s.observe(K, _handshake(clock))
    relay.answers[K] = "198.51.100.2:51820"
    clock.advance(5)
    assert not s.observe(K, _handshake(clock))  # held off for 15 s
    clock.advance(10)
    relay.answers[K] = "198.51.100.2:51820"
    assert s.observe(K, _handshake(clock))
    assert s.choice(K).endpoint == "198.51.100.2:51820"


def test_no_relay_rotates_direct_candidates() -> None:
    clock = FakeClock()
    s = _sel(clock, ("192.0.2.1:1", "10.0.0.1:1"), region="elsewhere")
    clock.advance(6)
    assert s.observe(K, 0)
    assert s.choice(K).endpoint == "10.0.0.1:1"
    clock.advance(6)
    assert s.observe(K, 0)
    assert s.choice(K).endpoint == "192.0.2.1:1"


def test_peer_without_candidates_starts_on_relay() -> None:
    clock = FakeClock()
    s = _sel(clock, ())
    assert s.choice(K).endpoint == PROXY


def test_follows_wireguard_roaming_both_ways() -> None:
    clock = FakeClock()
    s = _sel(clock)
    clock.advance(1)
    # The peer reached us over the relay while we tried direct: WireGuard moved to the proxy port.
    assert s.observe(K, _handshake(clock), PROXY)
    assert s.choice(K).path == "relay" and s.take_recreate() == set()
    # Later the peer reached us directly from a new address: follow it without re-creating.
    clock.advance(1)
    assert s.observe(K, _handshake(clock), "203.0.113.9:51820")
    assert s.choice(K).endpoint == "203.0.113.9:51820" and s.choice(K).path == "direct"
    assert s.take_recreate() == set()


def test_new_candidates_are_probed_at_once() -> None:
    clock = FakeClock()
    s, relay = _relayed(clock)
    n = len(relay.probes)
    s.set_peers({K: (("203.0.113.1:51820", "10.0.0.2:51820"), "eu")})
    clock.advance(0.5)
    s.observe(K, _handshake(clock))
    assert relay.probes[n:] == [("203.0.113.1:51820", "10.0.0.2:51820")]


def test_network_change_probes_relayed_peers_at_once() -> None:
    clock = FakeClock()
    s, relay = _relayed(clock)
    clock.advance(0.5)
    s.observe(K, _handshake(clock))
    n = len(relay.probes)
    relay.generation += 1
    clock.advance(0.5)
    s.observe(K, _handshake(clock))
    assert len(relay.probes) == n + 1


def test_a_roamed_endpoint_with_a_fresh_handshake_survives_new_candidates() -> None:
    # The peer is behind a NAT: its candidate (a private address) is unreachable, but its own handshake
    # moved WireGuard to the NAT's public address. A map update with new candidates (the peer first
    # reported its engine's random port, then its listen port) must not move us back to a candidate.
    clock = FakeClock()
    s = _sel(clock, ("10.1.0.3:40123",), region="elsewhere")
    clock.advance(1)
    assert not s.observe(K, _handshake(clock), "198.51.100.7:1024")
    assert s.choice(K) == Choice("198.51.100.7:1024", "direct")
    s.set_peers({K: (("10.1.0.3:51820",), "elsewhere")})
    assert s.choice(K).endpoint == "198.51.100.7:1024" and s.take_recreate() == set()


def test_a_roaming_noted_before_the_tick_survives_new_candidates() -> None:
    # The same, when the map update is applied before a tick has seen the handshake.
    clock = FakeClock()
    s = _sel(clock, ("10.1.0.3:40123",), region="elsewhere")
    clock.advance(1)
    s.note_roaming(K, _handshake(clock), "198.51.100.7:1024")
    s.set_peers({K: (("10.1.0.3:51820",), "elsewhere")})
    assert s.choice(K).endpoint == "198.51.100.7:1024"
    assert not s.observe(K, _handshake(clock), "198.51.100.7:1024")
    assert s.choice(K) == Choice("198.51.100.7:1024", "direct")


def test_an_old_handshake_does_not_pin_a_roamed_endpoint() -> None:
    clock = FakeClock()
    s = _sel(clock, ("10.1.0.3:51820",), region="elsewhere")
    clock.advance(1)
    s.note_roaming(K, _handshake(clock) - 200, "198.51.100.7:1024")  # older than the stale limit
    s.note_roaming(K, _handshake(clock), PROXY)  # the relay path is followed by observe, not here
    assert s.choice(K).endpoint == "10.1.0.3:51820"
