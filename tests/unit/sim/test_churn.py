"""The simulator's churn figures: how many events a share makes, and each change's propagation time."""

from __future__ import annotations

import math

from cvlan.sim.churn import Change, Membership, Quota, Receipt, propagation

INF = math.inf


def v(db: int, epoch: int = 1) -> int:
    """A map version as the controller makes them: the CVLAN's database version, then an epoch."""
    return db << 24 | 1 << 16 | epoch


def test_a_small_share_still_makes_events_over_several_seconds() -> None:
    q = Quota()
    # 0.0001 of 2,000 nodes: one event every five seconds, not none.
    assert sum(q.take(0.0001, 2000) for _ in range(50)) == 10
    assert Quota().take(0.01, 1000) == 10


def test_propagation_is_the_last_member_to_hold_the_new_version() -> None:
    members = [Membership(n, 7, 0.0, INF) for n in (1, 2, 3)]
    receipts = [
        Receipt(1, 7, 100, 5.0),  # before the change
        Receipt(2, 7, 100, 5.0),
        Receipt(3, 7, 100, 5.0),
        Receipt(1, 7, 101, 10.2),  # the change's version, first seen after it was committed
        Receipt(2, 7, 101, 10.4),
        Receipt(3, 7, 102, 10.9),  # a later version also carries the change
    ]
    prop = propagation([Change("endpoint", 7, 10.0, 10.1)], receipts, members, end=100.0)
    (o,) = prop.outcomes
    assert o.members == 3 and o.missing == 0
    assert o.seconds is not None and abs(o.seconds - 0.9) < 1e-9


def test_a_member_that_never_gets_the_change_is_not_reached() -> None:
    members = [Membership(1, 7, 0.0, INF), Membership(2, 7, 0.0, INF)]
    # Member 2 gets the version before the change once more (an answer made just before the commit).
    receipts = [
        Receipt(1, 7, v(3), 5.0),
        Receipt(2, 7, v(3), 5.0),
        Receipt(1, 7, v(4), 10.2),
        Receipt(2, 7, v(3, 2), 10.3),  # a new epoch of the old database version: not the change
    ]
    prop = propagation([Change("policy", 7, 10.0, 10.1)], receipts, members, end=100.0)
    assert [o.missing for o in prop.not_reached] == [1]
    assert prop.reached == []
    # The same for an endpoint change: an answer made before it, read after it was committed.
    receipts = [Receipt(1, 7, 100, 5.0), Receipt(2, 7, 100, 5.0), Receipt(1, 7, 101, 10.2)]
    receipts.append(Receipt(2, 7, 100, 10.3))
    prop = propagation([Change("endpoint", 7, 10.0, 10.1)], receipts, members, end=100.0)
    assert [o.missing for o in prop.not_reached] == [1]


def test_members_may_hold_a_committed_change_before_its_answer_is_read() -> None:
    """A deletion's or a policy change's members are woken at the commit and may get their new maps
    before the simulator reads the answer to the DELETE or PUT (a loaded simulator reads its sockets
    in any order): the change reached them all the same."""
    members = [Membership(n, 7, 0.0, INF) for n in (1, 2, 3)]
    receipts = [
        Receipt(1, 7, v(3), 5.0),
        Receipt(2, 7, v(3), 5.0),
        Receipt(3, 7, v(3, 2), 9.0),  # an endpoint change of the same database version
        Receipt(1, 7, v(4), 10.2),  # the change's version, read before the answer (10.5)
        Receipt(2, 7, v(4), 10.3),
        Receipt(3, 7, v(4), 10.4),
    ]
    for kind in ("delete", "policy", "join"):
        prop = propagation([Change(kind, 7, 10.0, 10.5)], receipts, members, end=100.0)
        (o,) = prop.outcomes
        assert o.members == 3 and o.missing == 0, kind
        assert o.seconds is not None and abs(o.seconds - 0.4) < 1e-9


def test_members_that_left_or_joined_later_and_other_cvlans_are_not_waited_for() -> None:
    members = [
        Membership(1, 7, 0.0, INF),
        Membership(2, 7, 0.0, 10.5),  # deleted before it got the change
        Membership(3, 7, 20.0, INF),  # joined after the change
        Membership(4, 8, 0.0, INF),  # another CVLAN
    ]
    receipts = [Receipt(1, 7, 101, 10.3), Receipt(4, 8, 55, 10.2)]
    prop = propagation([Change("delete", 7, 10.0, 10.1)], receipts, members, end=100.0)
    (o,) = prop.outcomes
    assert o.members == 2 and o.missing == 0
    assert o.seconds is not None and abs(o.seconds - 0.3) < 1e-9


def test_changes_committed_after_the_end_are_left_out() -> None:
    members = [Membership(1, 7, 0.0, INF)]
    prop = propagation([Change("join", 7, 99.0, 99.5)], [], members, end=90.0)
    assert prop.outcomes == []
