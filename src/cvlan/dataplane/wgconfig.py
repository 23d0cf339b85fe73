"""Typed WireGuard device configuration and observed device state, independent of the engine.

Keys are cvlan.wire.keys.KeyHex and endpoints the text cvlan.wire.endpoint.parse_endpoint accepts."""

from __future__ import annotations

from dataclasses import dataclass, field

from cvlan.wire.keys import KeyHex


@dataclass(frozen=True, slots=True)
class WgPeer:
    """One peer as the engine should have it."""

    public_key: KeyHex
    allowed_ips: tuple[str, ...]
    endpoint: str = ""
    """"" = none chosen (the device keeps whatever it learnt by roaming)."""
    keepalive: int = 0


@dataclass(frozen=True, slots=True)
class WgConfig:
    """The whole device as the engine should have it."""

    private_key: KeyHex
    listen_port: int
    peers: tuple[WgPeer, ...] = ()
    fwmark: int = 0
    """Mark on the device's own UDP packets (0 = none): policy routing keeps them out of the tunnel."""

    def __repr__(self) -> str:  # never print the private key
        return f"WgConfig(listen_port={self.listen_port}, peers={len(self.peers)})"


@dataclass(slots=True)
class PeerState:
    """One peer as the device reports it."""

    public_key: KeyHex
    endpoint: str = ""
    last_handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int = 0
    allowed_ips: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DeviceState:
    """The device as it reports itself (UAPI get=1 or netlink)."""

    listen_port: int = 0
    public_key: KeyHex | None = None
    peers: dict[KeyHex, PeerState] = field(default_factory=dict)
