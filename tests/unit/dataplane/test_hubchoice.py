"""Vrouter failover logic (pure, fake clock): liveness from rx counters and handshakes, probing,
failover at once, failback only after the hold-down time, no flapping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest

from cvlan.common.clock import FakeClock
from cvlan.dataplane.hubchoice import CONFIRM_S, HOLD_S, SUSPECT_S, HubLiveness, choose

A, B, C = "a" * 64, "b" * 64, "c" * 64


@dataclass
class Step:
    at: float
    """Seconds since the start (the clock only moves forward)."""
    heard: set[str] = field(default_factory=set)
    """Peers whose rx counter grew since the previous step."""
    handshake: set[str] = field(default_factory=set)
    """Peers that completed a new handshake since the previous step (after a probe: counters reset)."""
    active: str = A
    probes: set[str] = field(default_factory=set)


def run(steps: list[Step], order: tuple[str, ...] = (A, B), own: str = "") -> list[str]:
    """Drive a HubLiveness through steps (one observation per peer each step); returns mismatches."""
    clock = FakeClock()
    live = HubLiveness(clock, own=own)
    live.watch(k for k in order if k != own)
    rx = dict.fromkeys(order, 0)
    hs = dict.fromkeys(order, 0.0)
    t0 = clock.now().timestamp()
    now = 0.0
    bad = []
    for s in steps:
        clock.advance(s.at - now)
        now = s.at
        for k in order:
            if k == own:
                continue
            if k in s.handshake:
                rx[k], hs[k] = 148, t0 + now
            elif k in s.heard:
                rx[k] += 32
            live.observe(k, rx[k], hs[k])
        got = live.active(order)
        probes = live.take_probes()
        if got != s.active or probes != s.probes:
            bad.append(f"t={s.at}: active {got[:1]} (want {s.active[:1]}), probes {sorted(probes)}")
        for k in probes:
            rx[k] = 0  # the caller re-creates a probed peer: its counters start again
    return bad


def every(start: float, stop: float, **kw: object) -> list[Step]:
    out = []
    t = start
    while t <= stop:
        out.append(Step(t, **kw))  # type: ignore[arg-type]
        t += 1.0
    return out


BOTH = {A, B}
P = SUSPECT_S
"""A peer last heard at t=0 is probed at the tick at P ..."""
D = float(math.ceil(SUSPECT_S + CONFIRM_S))
"""... and found dead at the first tick CONFIRM_S later (ticks every second)."""


def silent_a(until: float, then: float = 0.0) -> list[Step]:
    """A (the first preference) heard at `then`, silent afterwards: probed, dead, traffic on B."""
    return [
        Step(then, heard=BOTH),
        *every(then + 1, then + P - 1, heard={B}),
        Step(then + P, heard={B}, probes={A}),
        *every(then + P + 1, then + D - 1, heard={B}),
        *every(then + D, until, heard={B}, active=B),
    ]


CASES: dict[str, list[Step]] = {
    "both alive: the first preference carries traffic": every(0, 30, heard=BOTH),
    "the active one goes silent: probed, then traffic fails over at once": silent_a(40),
    "a probe answered by a handshake keeps the active one (one-way traffic)": [
        Step(0, heard=BOTH),
        *every(1, P - 1, heard={B}),
        Step(P, heard={B}, probes={A}),
        Step(P + 1, heard={B}, handshake={A}),
        *every(P + 2, 2 * P, heard={B}),
        Step(2 * P + 1, heard={B}, probes={A}),
        *every(2 * P + 2, 30, heard=BOTH),
    ],
    "back to the first preference only after it was alive for the hold-down time": [
        *silent_a(9),
        *every(10, 10 + HOLD_S - 1, heard=BOTH, active=B),
        *every(10 + HOLD_S, 40, heard=BOTH),
    ],
    "a first preference that comes and goes never takes traffic back (no flapping)": [
        *silent_a(9),
        *every(10, 14, heard=BOTH, active=B),  # alive for 5 s (< HOLD_S) ...
        *[replace(s, active=B) for s in silent_a(21, then=14)[1:]],  # ... and dead again
        *every(22, 22 + HOLD_S - 1, heard=BOTH, active=B),
        *every(22 + HOLD_S, 40, heard=BOTH),
    ],
    "all silent: probed, and traffic stays where it is": [
        Step(0, heard=BOTH),
        *every(1, P - 1),
        Step(P, probes={A, B}),
        *every(P + 1, 20),
    ],
    "the standby dies: nothing moves": [
        Step(0, heard=BOTH),
        *every(1, P - 1, heard={A}),
        Step(P, heard={A}, probes={B}),
        *every(P + 1, 20, heard={A}),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_failover(name: str) -> None:
    assert run(CASES[name]) == [], name


def test_failover_reaches_the_third_choice_when_two_die() -> None:
    steps = [
        Step(0, heard={A, B, C}),
        *every(1, P - 1, heard={C}),
        Step(P, heard={C}, probes={A, B}),
        *every(P + 1, D - 1, heard={C}),
        *every(D, 20, heard={C}, active=C),
    ]
    assert run(steps, order=(A, B, C)) == []


def test_a_vrouter_is_always_alive_to_itself() -> None:
    # Vrouter B (own key) routes a member preferring A to A while A lives, else to itself.
    steps = [
        Step(0, heard={A}),
        *every(1, P - 1),
        Step(P, probes={A}),
        *every(P + 1, D - 1),
        *every(D, 20, active=B),
    ]
    assert run(steps, own=B) == []
    assert run(every(0, 20, heard={A}, active=B), order=(B, A), own=B) == [], "first preference: itself"


def test_the_failover_bound() -> None:
    # With a tick every second, a vrouter silent from t=0 has lost its traffic by the tick at D.
    assert D <= 6, "failover must complete within a few seconds"


@pytest.mark.parametrize(
    ("order", "current", "alive", "held", "want"),
    [
        ("AB", None, "AB", "AB", "A"),
        ("AB", "B", "AB", "B", "B"),  # A alive but not held: stay
        ("AB", "B", "AB", "AB", "A"),  # A held: move back
        ("AB", "A", "B", "B", "B"),  # current dead: fail over at once, no hold needed
        ("AB", "A", "", "", "A"),  # none alive: stay
        ("AB", "C", "", "", "A"),  # current not a candidate any more, none alive: the first
        ("ABC", "C", "BC", "BC", "B"),
        ("ABC", "C", "AC", "C", "C"),
    ],
)
def test_choose(order: str, current: str | None, alive: str, held: str, want: str) -> None:
    assert choose(list(order), current, lambda k: k in alive, lambda k: k in held) == want
