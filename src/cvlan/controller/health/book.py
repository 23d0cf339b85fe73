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


EXPIRE_EVERY_S = 60.0


class HealthBook:
    """Pairs per state of the latest report of every node this process took, and events counted.

    A node's pairs stop counting STALE_S after its last report here: with several controller
    processes a node's next reports may go to another one, and a pair it reported down here must
    not stay down in this process's gauge (nor a deleted node's)."""

    def __init__(self) -> None:
        self._states: dict[int, tuple[float, dict[str, int]]] = {}
        """node -> (monotonic time, pairs per state) of its latest report."""
        self._expired_at = 0.0

    def report(self, node_id: int, peers: Sequence[Mapping[str, Any]], now: float) -> None:
        """Take one node's report (now: the monotonic clock)."""
        self.forget(node_id)
        new = matrix.summary(matrix.pairs_of(Member(node_id, str(node_id), True, tuple(peers))))
        self._states[node_id] = (now, new)
        self._add(new, +1)
        if now - self._expired_at >= EXPIRE_EVERY_S:
            self.expire(now)

    def expire(self, now: float) -> None:
        """Stop counting the nodes that have not reported here for STALE_S."""
        self._expired_at = now
        for node_id in [k for k, (at, _) in self._states.items() if now - at >= matrix.STALE_S]:
            self.forget(node_id)

    @staticmethod
    def count(events: Iterable[Event]) -> None:
        """Count events found (and written)."""
        for e in events:
            C_EVENTS.labels(e.kind).inc()

    def forget(self, node_id: int) -> None:
        """A node's pairs no longer count."""
        _, counts = self._states.pop(node_id, (0.0, {}))
        self._add(counts, -1)

    @staticmethod
    def _add(counts: Mapping[str, int], sign: int) -> None:
        for state, n in counts.items():
            if n:
                G_PAIRS.labels(state).inc(sign * n)  # by difference: the gauge is the process's
