"""WireGuard keys as typed values: parsed at the boundary, printed safely in logs."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

KEY_LEN = 32


class KeyError_(ValueError):
    """A key that is not 32 bytes of hex or base64."""


@dataclass(frozen=True, slots=True)
class WgPublicKey:
    """A WireGuard (Curve25519) public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise KeyError_(f"WireGuard public key must be {KEY_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> WgPublicKey:
        """From 64 hex characters (UAPI form) or 44 base64 characters (wg(8) form)."""
        return cls(_parse(text))

    def __str__(self) -> str:
        return "nodekey:" + self.raw.hex()

    def short(self) -> str:
        """The first 8 hex characters, for logs."""
        return self.raw.hex()[:8]

    def wg_hex(self) -> str:
        return self.raw.hex()

    def b64(self) -> str:
        return base64.b64encode(self.raw).decode()


@dataclass(frozen=True, slots=True)
class WgPrivateKey:
    """A WireGuard private key. Its repr never shows the key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise KeyError_(f"WireGuard private key must be {KEY_LEN} bytes, got {len(self.raw)}")

    def __repr__(self) -> str:
        return "WgPrivateKey(<redacted>)"

    __str__ = __repr__

    def wg_hex(self) -> str:
        return self.raw.hex()


def _parse(text: str) -> bytes:
    t = text.strip()
    if len(t) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(t)
        except ValueError as e:
            raise KeyError_(f"key {t[:8]}...: not valid hex") from e
    try:
        raw = base64.b64decode(t, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyError_("key is neither 64 hex nor 44 base64 characters") from e
    if len(raw) != KEY_LEN:
        raise KeyError_(f"key decodes to {len(raw)} bytes, expected {KEY_LEN}")
    return raw
