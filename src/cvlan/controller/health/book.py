"""The peer health metrics of one controller process, kept as reports arrive: a scrape reads no
database. The events and history themselves are in the database (ops.health)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge

from cvlan.controller.health import matrix
from cvlan.controller.health.matrix import Event, Member

EVENT_KINDS = ("relay_fallback", "direct_again", "loss", "loss_ok", "unreachable", "reachable")
G_PAIRS = Gauge("cvlan_health_pairs", "Reported (node, peer) pairs by state", ["state"])
C_EVENTS = Counter("cvlan_health_events_total", "Peer health degradations and recoveries", ["kind"])
for _s in matrix.STATES:
    G_PAIRS.labels(_s)
for _k in EVENT_KINDS:
    C_EVENTS.labels(_k)


class HealthBook:
    """Pairs per state of the latest report of every node this process took, and events counted."""

    def __init__(self) -> None:
        self._states: dict[int, dict[str, int]] = {}
        """node -> pairs per state of its latest report."""

    def report(self, node_id: int, peers: Sequence[Mapping[str, Any]]) -> None:
        """Take one node's report."""
        self._add(self._states.pop(node_id, {}), -1)
        new = matrix.summary(matrix.pairs_of(Member(node_id, str(node_id), True, tuple(peers))))
        self._states[node_id] = new
        self._add(new, +1)

    @staticmethod
    def count(events: Iterable[Event]) -> None:
        """Count events found (and written)."""
        for e in events:
            C_EVENTS.labels(e.kind).inc()

    def forget(self, node_id: int) -> None:
        """A node left (deleted or moved): its pairs no longer count."""
        self._add(self._states.pop(node_id, {}), -1)

    @staticmethod
    def _add(counts: Mapping[str, int], sign: int) -> None:
        for state, n in counts.items():
            if n:
                G_PAIRS.labels(state).inc(sign * n)  # by difference: the gauge is the process's
