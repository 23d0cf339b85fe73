"""Churn in the steady state, and how long each change took to reach every member of its CVLAN.

Every second a share of the fleet restarts (drops its connection, reconnects with its identity and
asks for its map again), changes its endpoint (reported on its next poll, as cvlan-ctrl does),
joins (a new node registers with its CVLAN's token) or is deleted (management API); now and then an
administrator changes a CVLAN's policy or its mode. Each change is recorded where it was made:

* a change: (kind, CVLAN id, sent, committed), the times the request that made it was sent and
  answered (the poll that carried a new endpoint, the registration, the DELETE, the PUT or PATCH);
* a receipt: (node, CVLAN id, map version, time), every full map a node received;
* a membership: (node, CVLAN id, joined, left), when a node's registration was answered and when it
  was deleted.

Map versions are tokens the controller makes per CVLAN and only ever increases while it runs; their
upper bits are the CVLAN's version in the database, which every committed change bumps in its own
transaction (mapper/cache.py: db_version << 24 | generation << 16 | epoch). So the version that
carries a change is:

* for a change committed to the database (a join, a deletion, a policy or mode change): the lowest
  version received after the change was sent whose database part is above that of every version
  received before it was sent. Its members may hold it before the simulator reads the answer that
  says it was committed: a loaded simulator can read the woken members' new maps before the answer
  to the DELETE or PUT that caused them (counting only what arrived after that answer found no
  version at all, and called every member of the CVLAN "not reached");
* for an endpoint change (held in memory, a new epoch of the same database version): the lowest
  version received after the change was committed (the mover's own answer, which carries it) that
  is above every version received before it was sent (an answer made just before may arrive after).

Its propagation time is, over the members of the CVLAN when it was committed, the latest time one
of them first held that version or a later one, counted from when the change was sent. A member
deleted before it received it is not waited for; a member that never received it is counted as not
reached."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

KINDS = ("restart", "endpoint", "join", "delete", "policy", "mode")
ADMIN_KINDS = ("policy", "mode")
COMMITTED_KINDS = ("join", "delete", "policy", "mode")
"""Changes committed to the database: each bumps the CVLAN's version there."""
DB_SHIFT = 24
"""A map version's database part: version >> DB_SHIFT (mapper/cache.py's token layout)."""


@dataclass(frozen=True)
class ChurnConfig:
    """Shares of the fleet per second; 0 turns a kind off."""

    restart: float = 0.0
    endpoint: float = 0.0
    join: float = 0.0
    delete: float = 0.0
    admin_every_s: float = 0.0
    """One policy or CVLAN mode change (alternately) every this many seconds, fleet-wide; 0: none."""

    @property
    def active(self) -> bool:
        return any((self.restart, self.endpoint, self.join, self.delete, self.admin_every_s))


class Change(NamedTuple):
    kind: str
    cvlan: int
    sent: float
    committed: float


class Receipt(NamedTuple):
    node: int
    cvlan: int
    version: int
    t: float


class Membership(NamedTuple):
    node: int
    cvlan: int
    joined: float
    left: float
    """math.inf while the node is a member."""


class Quota:
    """How many events of a kind to make this second: share x nodes, the fraction carried over (a
    share of 0.0001 of 2,000 nodes is one event every five seconds, not none)."""

    def __init__(self) -> None:
        self.carry = 0.0

    def take(self, share: float, nodes: int) -> int:
        self.carry += share * nodes
        n = int(self.carry)
        self.carry -= n
        return n


POLICIES = (
    {
        "rules": [
            {
                "src": ["tag:sim"],
                "dst": ["*"],
                "proto": "tcp",
                "ports": ["22", "443"],
                "comment": "ssh, https",
            },
            {"src": ["*"], "dst": ["*"], "proto": "icmp"},
        ]
    },
    {
        "rules": [
            {"src": ["tag:sim"], "dst": ["*"], "proto": "tcp", "ports": ["22", "443", "8000-8100"]},
            {"src": ["*"], "dst": ["*"], "proto": "icmp"},
        ]
    },
)
"""Every simulated CVLAN has POLICIES[0]; a policy change switches a CVLAN to the other one."""


def pick(rng: random.Random, items: list[int], k: int) -> list[int]:
    return rng.sample(items, min(k, len(items)))


@dataclass
class Outcome:
    """One change's propagation: seconds until the last member held it, or None if one never did."""

    change: Change
    seconds: float | None
    members: int
    missing: int = 0


@dataclass
class Propagation:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def reached(self) -> list[float]:
        return [o.seconds for o in self.outcomes if o.seconds is not None]

    @property
    def not_reached(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.seconds is None]


def propagation(
    changes: Iterable[Change], receipts: Iterable[Receipt], members: Iterable[Membership], end: float
) -> Propagation:
    """Each change's propagation time over the members of its CVLAN (see the module docstring).
    Changes committed less than a poll's time before `end` may not have reached everyone yet: the
    caller passes as `end` the time the receipts stop."""
    by_cvlan: dict[int, list[Receipt]] = {}
    for r in receipts:
        by_cvlan.setdefault(r.cvlan, []).append(r)
    per_node: dict[tuple[int, int], list[Receipt]] = {}
    for rs in by_cvlan.values():
        rs.sort(key=lambda r: r.t)
        for r in rs:
            per_node.setdefault((r.node, r.cvlan), []).append(r)
    times = {c: [r.t for r in rs] for c, rs in by_cvlan.items()}
    highest: dict[int, list[int]] = {}
    """Per CVLAN, the highest version received up to each receipt (in time order)."""
    for c, rs in by_cvlan.items():
        top = highest[c] = []
        for r in rs:
            top.append(max(r.version, top[-1]) if top else r.version)
    roster: dict[int, list[Membership]] = {}
    for m in members:
        roster.setdefault(m.cvlan, []).append(m)
    out = Propagation()
    for ch in sorted(changes, key=lambda c: c.sent):
        if ch.committed > end:
            continue
        rs = by_cvlan.get(ch.cvlan, [])
        ts = times.get(ch.cvlan, [])
        before = bisect.bisect_left(ts, ch.sent)
        floor = highest[ch.cvlan][before - 1] if before else -1
        version = _carrier(ch, rs, before, bisect.bisect_left(ts, ch.committed), floor)
        who = [m for m in roster.get(ch.cvlan, []) if m.joined <= ch.committed < m.left]
        latest = 0.0
        missing = 0
        for m in who:
            got = (
                None
                if version is None
                else next((r.t for r in per_node.get((m.node, ch.cvlan), []) if r.version >= version), None)
            )
            if got is None or got > m.left:
                if m.left == math.inf:
                    missing += 1
                continue
            latest = max(latest, got - ch.sent)
        out.outcomes.append(Outcome(ch, None if missing else max(0.0, latest), len(who), missing))
    return out


def _carrier(ch: Change, rs: list[Receipt], before: int, after: int, floor: int) -> int | None:
    """The lowest map version that carries the change (module docstring): rs are the CVLAN's receipts
    in time order, rs[before:] those received after it was sent, rs[after:] after it was committed,
    floor the highest version received before it was sent."""
    if ch.kind in COMMITTED_KINDS:
        db_floor = floor >> DB_SHIFT if floor >= 0 else -1
        return min((r.version for r in rs[before:] if r.version >> DB_SHIFT > db_floor), default=None)
    return min((r.version for r in rs[after:] if r.version > floor), default=None)
