"""Path selection without a relay: rotate through the direct candidates until a handshake, stay while
it is fresh. (With a relay: tests/unit/cvland/test_relaypath.py.)"""

from __future__ import annotations

from cvlan.common.clock import FakeClock
from cvlan.cvland.relaypath import NoRelayPaths, PathSelector

K = "11" * 32


def make(clock: FakeClock, *cands: str) -> PathSelector:
    s = PathSelector(clock, NoRelayPaths(), probe_s=5.0, stale_s=180.0)
    s.set_peers({K: (cands, "")})
    return s


def test_first_candidate_first_then_rotates_without_handshake() -> None:
    clock = FakeClock()
    s = make(clock, "10.0.0.1:1", "10.0.0.2:1")
    assert s.choice(K).endpoint == "10.0.0.1:1" and s.choice(K).path == "none"
    clock.advance(4.9)
    assert not s.observe(K, 0.0)
    clock.advance(0.2)
    assert s.observe(K, 0.0)
    assert s.choice(K).endpoint == "10.0.0.2:1"
    clock.advance(5.1)
    assert s.observe(K, 0.0)
    assert s.choice(K).endpoint == "10.0.0.1:1"  # wraps around


def test_handshake_pins_the_choice_until_it_goes_stale() -> None:
    clock = FakeClock()
    s = make(clock, "10.0.0.1:1", "10.0.0.2:1")
    clock.advance(6)
    s.observe(K, 0.0)
    hs = clock.now().timestamp()
    clock.advance(100)
    assert not s.observe(K, hs)
    assert s.choice(K).endpoint == "10.0.0.2:1" and s.choice(K).path == "direct"
    clock.advance(81)  # handshake now 181 s old: stale, so the next candidate is tried
    assert s.observe(K, hs)
    assert s.choice(K).endpoint == "10.0.0.1:1" and s.choice(K).path == "none"


def test_single_or_no_candidate_never_rotates() -> None:
    clock = FakeClock()
    s = make(clock, "10.0.0.1:1")
    clock.advance(60)
    assert not s.observe(K, 0.0)
    s.set_peers({K: ((), "")})
    assert s.choice(K).endpoint == "" and s.choice("unknown").path == "none"


def test_unchanged_candidates_keep_their_state() -> None:
    clock = FakeClock()
    s = make(clock, "10.0.0.1:1", "10.0.0.2:1")
    clock.advance(6)
    s.observe(K, 0.0)
    s.set_peers({K: (("10.0.0.1:1", "10.0.0.2:1"), "r1")})
    assert s.choice(K).endpoint == "10.0.0.2:1"
