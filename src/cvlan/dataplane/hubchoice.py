"""Which of several vrouters carries traffic now: liveness from WireGuard counters, and failover
with a hold-down (pure logic over an injected clock; used by cvland and by cvlan-vrouter).

WireGuard gives one CIDR to one peer only, so a node with two vrouters in its region routes its
CVLAN subnet to one of them (the active one) and keeps the others as standby peers without
allowed IPs. The controller sends the candidates in a preference order that is fixed per node;
every vrouter applies the same order to decide through which vrouter a node is reached. All
sides therefore agree as long as they agree on which vrouters are alive.

Liveness (per vrouter peer): a vrouter sends a keepalive every HUB_KEEPALIVE seconds to each peer
that could fail over, so an idle but alive peer's rx counter grows. When nothing was received for
SUSPECT_S, the peer is *probed*: the caller re-creates it on the device, which makes WireGuard
start a handshake at once (a keepalive toward a peer without a session needs one). An answer (rx
grows, or a new handshake) makes it alive again; none within CONFIRM_S makes it dead. A dead peer
comes back as soon as anything is received from it (the restarted vrouter's own keepalives start
a handshake toward us).

Choice: the first alive candidate in preference order. Failing over away from a dead active one
happens at once; moving back to a more preferred one only after it has been alive for HOLD_S
without a break, so a vrouter that comes and goes does not drag traffic back and forth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cvlan.common.clock import Clock

HUB_KEEPALIVE = 2
"""Persistent keepalive (s) a vrouter sends to peers that can fail over to or away from it."""
SUSPECT_S = 3.0
"""Nothing received for this long: probe the peer with a fresh handshake."""
CONFIRM_S = 2.5
"""No answer to the probe within this long: the peer is dead."""
HOLD_S = 10.0
"""A more preferred peer must be alive this long before traffic moves back to it."""


@dataclass(slots=True)
class _Seen:
    rx: int
    handshake: float
    last_rx_at: float
    alive_since: float
    probed_at: float | None = None
    dead: bool = False


class HubLiveness:
    """Tracks the liveness of vrouter peers from their rx counters and last handshakes, and
    remembers the active choice per preference order."""

    def __init__(
        self,
        clock: Clock,
        own: str = "",
        suspect_s: float = SUSPECT_S,
        confirm_s: float = CONFIRM_S,
        hold_s: float = HOLD_S,
    ) -> None:
        self._clock = clock
        self.own = own
        """The caller's own key when it is a candidate itself (a vrouter is always alive to itself)."""
        self.suspect_s, self.confirm_s, self.hold_s = suspect_s, confirm_s, hold_s
        self._peers: dict[str, _Seen] = {}
        self._probes: set[str] = set()
        self._active: dict[tuple[str, ...], str] = {}

    def watch(self, keys: Iterable[str]) -> None:
        """The peers to track from now on: new ones start alive (and count as held, so a fresh start
        picks the first preference like every other side); dropped ones are forgotten."""
        now = self._clock.monotonic()
        keep = set(keys)
        self._peers = {k: self._peers.get(k) or _Seen(-1, 0.0, now, now - self.hold_s) for k in keep}
        self._probes &= keep
        known = keep | {self.own}
        self._active = {o: a for o, a in self._active.items() if set(o) <= known}

    def observe(self, key: str, rx_bytes: int, last_handshake: float) -> bool:
        """Feed the device's counters of one peer; True if it turned dead or alive.

        Counters restart at 0 when the caller re-creates a probed peer: only growth counts, or a
        handshake newer than any seen before."""
        p = self._peers.get(key)
        if p is None:
            return False
        now = self._clock.monotonic()
        heard = rx_bytes > p.rx >= 0 or last_handshake > p.handshake
        first = p.rx < 0
        p.rx, p.handshake = rx_bytes, max(p.handshake, last_handshake)
        if heard or first:
            p.last_rx_at, p.probed_at = now, None
            if p.dead:
                p.dead, p.alive_since = False, now
                return True
            return False
        if p.dead:
            return False
        if p.probed_at is None:
            if now - p.last_rx_at >= self.suspect_s:
                p.probed_at = now
                self._probes.add(key)
            return False
        if now - p.probed_at >= self.confirm_s:
            p.dead = True
            return True
        return False

    def alive(self, key: str) -> bool:
        if key == self.own and key:
            return True
        p = self._peers.get(key)
        return p is not None and not p.dead

    def held(self, key: str) -> bool:
        """Alive without a break for the hold-down time (the own key always is)."""
        if key == self.own and key:
            return True
        p = self._peers.get(key)
        return p is not None and not p.dead and self._clock.monotonic() - p.alive_since >= self.hold_s

    def take_probes(self) -> set[str]:
        """Peers to re-create on the device now (each starts a handshake at once)."""
        out, self._probes = self._probes, set()
        return out

    def active(self, order: Sequence[str]) -> str:
        """The candidate that carries traffic for this preference order ("" when order is empty).
        The choice is remembered per order, so moving back waits for the hold-down time."""
        if not order:
            return ""
        key = tuple(order)
        pick = choose(key, self._active.get(key), self.alive, self.held)
        self._active[key] = pick
        return pick

    def refresh(self) -> bool:
        """Re-evaluate the choice of every order in use; True if one moved (a peer died, or a more
        preferred one has now been alive for the hold-down time): the caller rewrites its routes."""
        moved = False
        for order, cur in self._active.items():
            pick = choose(order, cur, self.alive, self.held)
            moved = moved or pick != cur
            self._active[order] = pick
        return moved


def choose(
    order: Sequence[str], current: str | None, alive: Callable[[str], bool], held: Callable[[str], bool]
) -> str:
    """The first alive candidate; an alive current one is left only for a more preferred one that
    has been alive for the hold-down time. With none alive, stay with the current one."""
    if current is not None and current in order and alive(current):
        for k in order:
            if k == current or (alive(k) and held(k)):
                return k
    for k in order:
        if alive(k):
            return k
    return current if current is not None and current in order else order[0]
