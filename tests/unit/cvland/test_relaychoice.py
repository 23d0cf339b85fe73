"""RelayChoice: nodes spread over a region's relays by rendezvous hashing; both ends of a pair pick
the same relay for the receiver; a dead relay, then a dead region, is skipped."""

from __future__ import annotations

import hashlib

from cvlan.cvland.relaychoice import RelayChoice, rendezvous

EU = ["https://eu1.example.net", "https://eu2.example.net", "https://eu3.example.net"]
US = ["https://us1.example.net"]


def _key(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(4, "big")).digest()


def _choice(down: frozenset[str] | set[str] = frozenset()) -> RelayChoice:
    return RelayChoice({"eu": EU, "us": US}, lambda u: u in down)


def test_homes_spread_over_every_relay_of_the_region() -> None:
    homes = [_choice().home(_key(i), "eu", {})[1] for i in range(300)]
    counts = {u: homes.count(u) for u in EU}
    assert all(60 <= n <= 140 for n in counts.values()), counts


def test_sender_picks_the_relay_the_receiver_made_its_home() -> None:
    for i in range(50):
        for down in (set(), {EU[0]}, {EU[0], EU[1]}):
            receiver_home = _choice(down).home(_key(i), "eu", {})
            assert receiver_home[0] == "eu"
            assert _choice(down).for_peer(_key(i), "eu", home="https://us1.example.net") == receiver_home[1]


def test_a_dead_relay_moves_only_its_own_nodes() -> None:
    before = [_choice().home(_key(i), "eu", {})[1] for i in range(100)]
    after = [_choice({EU[1]}).home(_key(i), "eu", {})[1] for i in range(100)]
    moved = [i for i in range(100) if before[i] != after[i]]
    assert moved and all(before[i] == EU[1] for i in moved)
    assert EU[1] not in after


def test_region_down_moves_home_to_the_next_best_region() -> None:
    assert _choice(set(EU)).home(_key(1), "eu", {"us": 0.08}) == ("us", US[0])
    # Every relay down: keep the preferred region's first choice (its client keeps retrying).
    region, url = _choice({*EU, *US}).home(_key(1), "eu", {})
    assert region == "eu" and url == rendezvous(_key(1), EU)[0]


def test_peer_whose_region_is_down_is_reached_through_our_home() -> None:
    assert _choice(set(US)).for_peer(_key(2), "us", home=EU[2]) == EU[2]
    # A peer without a home region: our region's relays, in the peer's order.
    assert _choice().for_peer(_key(2), "", home=EU[0]) == rendezvous(_key(2), EU)[0]


def test_relay_that_said_peer_gone_is_passed_over_while_another_is_up() -> None:
    first, second = rendezvous(_key(3), EU)[:2]
    assert _choice().for_peer(_key(3), "eu", home=EU[0], skip=frozenset({first})) == second
    # Every relay passed over or down: back to the order (the peer may have returned).
    assert _choice(set(EU) - {first}).for_peer(_key(3), "eu", home=EU[0], skip=frozenset({first})) == first
