"""Endpoint selection per peer: try the candidates in order, move on when no handshake follows.

Pure logic over an injected clock. `RelayFallback` is the seam for the relay path (a later
issue): when every direct candidate has been tried without a handshake, the fallback may supply
a local proxy endpoint that carries packets through the peer's home relay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cvlan.common.clock import Clock

PROBE_SECONDS = 5.0
"""How long a candidate gets to complete a handshake. wireguard-go retries a handshake every 5 s."""
STALE_SECONDS = 180.0
"""A handshake older than this (REJECT_AFTER_TIME) no longer proves the path works."""


class RelayFallback(Protocol):
    def endpoint_for(self, peer: str, relay_region: str) -> str | None:
        """A local endpoint that reaches peer through a relay, or None if there is none."""
        ...


class NoRelay:
    def endpoint_for(self, peer: str, relay_region: str) -> str | None:
        return None


@dataclass(slots=True)
class Choice:
    endpoint: str
    path: str
    """"direct", "relay" or "none"."""


@dataclass(slots=True)
class _Peer:
    candidates: tuple[str, ...]
    relay_region: str
    index: int
    since: float
    connected: bool = False
    tried_all: bool = False


class EndpointSelector:
    """Chooses one endpoint per peer and rotates through candidates until a handshake is seen."""

    def __init__(
        self,
        clock: Clock,
        probe_s: float = PROBE_SECONDS,
        stale_s: float = STALE_SECONDS,
        relay: RelayFallback | None = None,
    ) -> None:
        self._clock = clock
        self._probe_s = probe_s
        self._stale_s = stale_s
        self._relay = relay or NoRelay()
        self._peers: dict[str, _Peer] = {}

    def set_peers(self, peers: dict[str, tuple[tuple[str, ...], str]]) -> None:
        """peers: key -> (candidates, relay_region); peers with unchanged candidates keep their state."""
        now = self._clock.monotonic()
        nxt: dict[str, _Peer] = {}
        for key, (cands, region) in peers.items():
            old = self._peers.get(key)
            if old is not None and old.candidates == cands:
                old.relay_region = region
                nxt[key] = old
            else:
                nxt[key] = _Peer(candidates=cands, relay_region=region, index=0, since=now)
        self._peers = nxt

    def choice(self, key: str) -> Choice:
        p = self._peers.get(key)
        if p is None:
            return Choice("", "none")
        if p.index < len(p.candidates):
            return Choice(p.candidates[p.index], "direct" if p.connected else "none")
        relay = self._relay.endpoint_for(key, p.relay_region)
        return Choice(relay, "relay" if p.connected else "none") if relay else Choice("", "none")

    def observe(self, key: str, last_handshake: float) -> bool:
        """Feed the device's last handshake time (Unix seconds, 0 = never); True if the choice changed."""
        p = self._peers.get(key)
        if p is None:
            return False
        fresh = last_handshake > 0 and self._clock.now().timestamp() - last_handshake < self._stale_s
        now = self._clock.monotonic()
        if fresh:
            p.connected = True
            return False
        if p.connected:  # the path died: start probing again from the first candidate
            p.connected = False
            p.since = now
            return False
        if now - p.since < self._probe_s:
            return False
        slots = len(p.candidates) + (1 if self._relay.endpoint_for(key, p.relay_region) else 0)
        if slots <= 1:
            return False
        p.index = (p.index + 1) % slots
        p.since = now
        p.tried_all = p.tried_all or p.index == 0
        return True
