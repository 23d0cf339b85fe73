"""Typed WireGuard device configuration and observed device state, independent of the engine."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import NewType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

KeyHex = NewType("KeyHex", str)
"""A 32-byte WireGuard key as 64 lowercase hex characters (the UAPI's form)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_key(text: str, what: str = "key") -> KeyHex:
    """Return text as a KeyHex, or raise ValueError naming what was wrong."""
    t = text.strip().lower()
    if not _HEX64.fullmatch(t):
        raise ValueError(f"{what}: expected 64 hex characters, got {len(t)} characters")
    return KeyHex(t)


def short(key: KeyHex) -> str:
    """The first 8 hex characters, for logs (never log private keys at all)."""
    return key[:8]


def generate_keypair() -> tuple[KeyHex, KeyHex]:
    """A fresh (private, public) X25519 key pair in hex."""
    priv = X25519PrivateKey.generate()
    raw = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyHex(raw.hex()), KeyHex(pub.hex())


def public_of(private: KeyHex) -> KeyHex:
    """The public key of a hex private key."""
    priv = X25519PrivateKey.from_private_bytes(bytes.fromhex(private))
    return KeyHex(priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex())


def parse_endpoint(text: str) -> str:
    """Validate "ip:port" or "[v6]:port" and return it normalised; ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {text!r}: expected IP:PORT")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"endpoint {text!r}: {host!r} is not an IP address") from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


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
