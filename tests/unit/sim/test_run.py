"""When `cvlan-sim run` leaves its registration phase."""

from __future__ import annotations

from cvlan.sim.drive import CONNECTED_STILL_S, registration_done


def test_done_when_every_node_registered_and_connected() -> None:
    assert registration_done(1000, 1000, 1000, 1000, 0.0)


def test_waits_while_registrations_are_in_flight() -> None:
    assert not registration_done(1000, 990, 990, 990, 600.0)


def test_some_connections_missing_does_not_block_forever() -> None:
    """All 10,000 registered but some first connections failed: the run goes on once the
    connected count has been still for a while (those nodes keep reconnecting)."""
    assert not registration_done(10_000, 10_000, 10_000, 7_949, 1.0)
    assert registration_done(10_000, 10_000, 10_000, 7_949, CONNECTED_STILL_S)


def test_refused_registrations_end_the_phase_once_settled() -> None:
    assert not registration_done(100, 97, 99, 97, 60.0)
    assert registration_done(100, 97, 100, 97, CONNECTED_STILL_S + 1)
