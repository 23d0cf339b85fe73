"""Typed WireGuard keys: parsing from hex and base64, safe printing, exact errors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvlan.wire.keys import KeyError_, WgPrivateKey, WgPublicKey


@given(st.binary(min_size=32, max_size=32))
def test_parse_round_trips(raw: bytes) -> None:
    k = WgPublicKey(raw)
    assert WgPublicKey.parse(k.wg_hex()) == k == WgPublicKey.parse(k.b64())
    assert str(k) == "nodekey:" + raw.hex() and k.short() == raw.hex()[:8]


def test_private_key_never_prints() -> None:
    k = WgPrivateKey(b"\x01" * 32)
    assert "01" not in repr(k) and "01" not in str(k) and k.wg_hex() == "01" * 32


def test_errors() -> None:
    with pytest.raises(KeyError_, match="must be 32 bytes, got 3"):
        WgPublicKey(b"abc")
    with pytest.raises(KeyError_, match="not valid hex"):
        WgPublicKey.parse("zz" * 32)
    with pytest.raises(KeyError_, match="neither 64 hex nor 44 base64"):
        WgPublicKey.parse("!!")
    with pytest.raises(KeyError_, match="decodes to 3 bytes"):
        WgPublicKey.parse(base64.b64encode(b"abc").decode())
