"""WireGuard keys as the UAPI writes them (64 lowercase hex characters), parsed at the boundary."""

from __future__ import annotations

import re
from typing import NewType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = ["KeyHex", "generate_keypair", "parse_key", "public_of", "short"]

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
