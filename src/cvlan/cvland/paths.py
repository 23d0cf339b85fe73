"""What path selection per peer shares: its timing constants and the Choice it makes.

The selector itself is cvlan.cvland.relaypath.PathSelector (direct candidates first, then the
relay; with NoRelayPaths, the direct candidates only)."""

from __future__ import annotations

from dataclasses import dataclass

PROBE_SECONDS = 5.0
"""How long a candidate gets to complete a handshake. wireguard-go retries a handshake every 5 s."""
STALE_SECONDS = 180.0
"""A handshake older than this (REJECT_AFTER_TIME) no longer proves the path works."""


@dataclass(slots=True)
class Choice:
    endpoint: str
    path: str
    """"direct", "relay" or "none"."""
