"""PathSelector: direct first, relay after the probe period, direct retries with backoff, roaming."""

from __future__ import annotations

from cvlan.common.clock import FakeClock
from cvlan.cvland.relaypath import PathSelector

K = "aa" * 32
PROXY = "127.0.0.1:40000"


class FakeRelay:
    """A relay path that exists for region "eu" only."""

    def __init__(self) -> None:
        self.generation = 0

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


def test_direct_handshake_keeps_direct() -> None:
    clock = FakeClock()
    s = _sel(clock)
    clock.advance(1)
    assert not s.observe(K, _handshake(clock))
    clock.advance(100)
    assert not s.observe(K, _handshake(clock) - 50)
    assert s.choice(K).path == "direct"


def test_relayed_peer_retries_direct_with_backoff_and_returns() -> None:
    clock = FakeClock()
    s = _sel(clock)
    clock.advance(6)
    s.observe(K, 0)  # -> relay
    clock.advance(1)
    s.observe(K, _handshake(clock))  # relay works
    s.take_recreate()
    clock.advance(14)
    assert not s.observe(K, _handshake(clock))
    clock.advance(2)
    assert s.observe(K, _handshake(clock) - 3)  # retry time: try direct
    assert s.choice(K).endpoint == "198.51.100.2:51820" and s.take_recreate() == {K}
    clock.advance(6)
    assert s.observe(K, 0)  # no direct handshake: back to relay, next retry waits twice as long
    assert s.choice(K).endpoint == PROXY
    clock.advance(1)
    s.observe(K, _handshake(clock))
    clock.advance(29)
    assert not s.observe(K, _handshake(clock))
    clock.advance(2)
    assert s.observe(K, _handshake(clock) - 1)
    assert s.choice(K).endpoint == "198.51.100.2:51820"
    clock.advance(1)
    assert not s.observe(K, _handshake(clock))  # direct works now
    assert s.choice(K).path == "direct"


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


def test_new_candidates_make_a_relayed_peer_try_direct_now() -> None:
    clock = FakeClock()
    s = _sel(clock)
    clock.advance(6)
    s.observe(K, 0)
    clock.advance(1)
    s.observe(K, _handshake(clock))
    s.set_peers({K: (("203.0.113.1:51820", "10.0.0.2:51820"), "eu")})
    clock.advance(1)
    assert s.observe(K, _handshake(clock))
    assert s.choice(K).endpoint == "203.0.113.1:51820"


def test_network_change_makes_relayed_peers_try_direct_now() -> None:
    clock = FakeClock()
    relay = FakeRelay()
    s = PathSelector(clock, relay, probe_s=5, retry_s=15)
    s.set_peers({K: (("198.51.100.2:51820",), "eu")})
    clock.advance(6)
    s.observe(K, 0)
    clock.advance(1)
    assert not s.observe(K, _handshake(clock))
    relay.generation += 1
    clock.advance(1)
    assert s.observe(K, _handshake(clock))
    assert s.choice(K).endpoint == "198.51.100.2:51820"
