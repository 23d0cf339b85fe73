"""STUN (RFC 5389) message codec: constants, pure pack and parse functions, one attribute table.

Only what endpoint discovery needs is interpreted (Binding, the address attributes, SOFTWARE,
MESSAGE-INTEGRITY with a short-term key, FINGERPRINT, ERROR-CODE); other attributes are kept as raw
bytes under their hex type ("0x802a"), so a message round-trips. RFC 3489 clients put 4 random bytes
where the magic cookie goes; such messages parse (``Message.cookie`` holds those bytes) and a
responder answers them with MAPPED-ADDRESS only.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

MAGIC_COOKIE = 0x2112A442
HEADER_LEN = 20
TRANSACTION_ID_LEN = 12
FINGERPRINT_XOR = 0x5354554E  # RFC 5389 section 15.5: "STUN" XORed into the CRC-32
INTEGRITY_LEN = 20
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")


class StunError(ValueError):
    """A datagram that is not a well-formed STUN message, or a value that cannot be encoded."""


class Method(IntEnum):
    BINDING = 0x001


class MessageClass(IntEnum):
    REQUEST = 0x000
    INDICATION = 0x010
    SUCCESS = 0x100
    ERROR = 0x110


Address = tuple[str, int]
"""(ip text, port): the value of every address attribute."""


@dataclass(frozen=True)
class Message:
    """One STUN message. ``attributes`` keeps wire order; names come from ATTRIBUTES."""

    method: int
    msg_class: int
    transaction_id: bytes
    attributes: dict[str, Any] = field(default_factory=dict)
    cookie: int = MAGIC_COOKIE

    @property
    def is_rfc5389(self) -> bool:
        return self.cookie == MAGIC_COOKIE

    @property
    def message_type(self) -> int:
        return message_type(self.method, self.msg_class)


def message_type(method: int, msg_class: int) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 5389 section 6, figure 3)."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | msg_class


def split_message_type(t: int) -> tuple[int, int]:
    """(method, class) of a 14-bit message type."""
    method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
    return method, t & 0x0110


# --- attribute value codecs: pack(value, xor_key) -> bytes, unpack(bytes, name, xor_key) -> value ---
# xor_key is cookie + transaction id (16 bytes), used by the XOR-* address attributes.


def _pack_address(value: Address, xor_key: bytes, xor: bool) -> bytes:
    ip_text, port = value
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"STUN port {port} is out of range")
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError as e:
        raise StunError(f"STUN address {ip_text!r} is not an IP address") from e
    raw = ip.packed
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_key, strict=False))
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    return struct.pack("!BBH", 0, family, port) + raw


def _unpack_address(b: bytes, name: str, xor_key: bytes, xor: bool) -> Address:
    if len(b) < 4:
        raise StunError(f"STUN {name} has a bad length {len(b)}")
    _, family, port = struct.unpack_from("!BBH", b)
    want = {FAMILY_IPV4: 4, FAMILY_IPV6: 16}.get(family)
    if want is None:
        raise StunError(f"STUN {name} has an unknown address family {family}")
    if len(b) != 4 + want:
        raise StunError(f"STUN {name} has a bad length {len(b)}")
    raw = b[4:]
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ k for a, k in zip(raw, xor_key, strict=False))
    return str(ipaddress.ip_address(raw)), port


def _pack_text(value: str, xor_key: bytes) -> bytes:
    return value.encode()


def _unpack_text(b: bytes, name: str, xor_key: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError as e:
        raise StunError(f"STUN {name} is not UTF-8") from e


def _pack_bytes(value: bytes, xor_key: bytes) -> bytes:
    return bytes(value)


def _unpack_bytes(b: bytes, name: str, xor_key: bytes) -> bytes:
    return b


def _fixed_int(size: int) -> tuple[Callable[[int, bytes], bytes], Callable[[bytes, str, bytes], int]]:
    def pack(value: int, xor_key: bytes) -> bytes:
        try:
            return value.to_bytes(size, "big")
        except OverflowError as e:
            raise StunError(f"STUN value {value} does not fit in {size} bytes") from e

    def unpack(b: bytes, name: str, xor_key: bytes) -> int:
        if len(b) != size:
            raise StunError(f"STUN {name} has a bad length {len(b)}")
        return int.from_bytes(b, "big")

    return pack, unpack


def _pack_error_code(value: tuple[int, str], xor_key: bytes) -> bytes:
    code, reason = value
    if not 300 <= code <= 699:
        raise StunError(f"STUN error code {code} is out of range")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


def _unpack_error_code(b: bytes, name: str, xor_key: bytes) -> tuple[int, str]:
    if len(b) < 4:
        raise StunError(f"STUN {name} has a bad length {len(b)}")
    _, cls, number = struct.unpack_from("!HBB", b)
    return (cls & 0x07) * 100 + number, _unpack_text(b[4:], name, xor_key)


def _pack_unknown(value: tuple[int, ...], xor_key: bytes) -> bytes:
    return b"".join(struct.pack("!H", t) for t in value)


def _unpack_unknown(b: bytes, name: str, xor_key: bytes) -> tuple[int, ...]:
    if len(b) % 2:
        raise StunError(f"STUN {name} has a bad length {len(b)}")
    return tuple(struct.unpack(f"!{len(b) // 2}H", b))


def _addr(xor: bool) -> tuple[Callable[[Address, bytes], bytes], Callable[[bytes, str, bytes], Address]]:
    return (
        lambda v, k: _pack_address(v, k, xor),
        lambda b, n, k: _unpack_address(b, n, k, xor),
    )


_U32 = _fixed_int(4)
_U64 = _fixed_int(8)

ATTRIBUTES: list[tuple[int, str, Callable[[Any, bytes], bytes], Callable[[bytes, str, bytes], Any]]] = [
    (0x0001, "MAPPED-ADDRESS", *_addr(False)),
    (0x0003, "CHANGE-REQUEST", *_U32),  # RFC 5780 / RFC 3489
    (0x0004, "SOURCE-ADDRESS", *_addr(False)),  # RFC 3489
    (0x0005, "CHANGED-ADDRESS", *_addr(False)),  # RFC 3489
    (0x0006, "USERNAME", _pack_text, _unpack_text),
    (0x0008, "MESSAGE-INTEGRITY", _pack_bytes, _unpack_bytes),
    (0x0009, "ERROR-CODE", _pack_error_code, _unpack_error_code),
    (0x000A, "UNKNOWN-ATTRIBUTES", _pack_unknown, _unpack_unknown),
    (0x0014, "REALM", _pack_text, _unpack_text),
    (0x0015, "NONCE", _pack_text, _unpack_text),
    (0x0020, "XOR-MAPPED-ADDRESS", *_addr(True)),
    (0x0024, "PRIORITY", *_U32),  # RFC 8445
    (0x0025, "USE-CANDIDATE", _pack_bytes, _unpack_bytes),  # RFC 8445
    (0x8022, "SOFTWARE", _pack_text, _unpack_text),
    (0x8023, "ALTERNATE-SERVER", *_addr(False)),
    (0x8028, "FINGERPRINT", *_U32),
    (0x8029, "ICE-CONTROLLED", *_U64),  # RFC 8445
    (0x802A, "ICE-CONTROLLING", *_U64),  # RFC 8445
    (0x802B, "RESPONSE-ORIGIN", *_addr(False)),  # RFC 5780
    (0x802C, "OTHER-ADDRESS", *_addr(False)),  # RFC 5780
]
ATTRIBUTES_BY_TYPE = {row[0]: row for row in ATTRIBUTES}
ATTRIBUTES_BY_NAME = {row[1]: row for row in ATTRIBUTES}


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _attr_type(name: str) -> int:
    row = ATTRIBUTES_BY_NAME.get(name)
    if row is not None:
        return row[0]
    if name.startswith("0x"):
        try:
            return int(name, 16)
        except ValueError:
            pass
    raise StunError(f"STUN attribute {name!r} is unknown")


def _encode_attr(name: str, value: Any, xor_key: bytes) -> bytes:
    t = _attr_type(name)
    row = ATTRIBUTES_BY_TYPE.get(t)
    body = row[2](value, xor_key) if row is not None else bytes(value)
    if len(body) > 0xFFFF:
        raise StunError(f"STUN {name} is longer than 65535 bytes")
    return _ATTR_HEADER.pack(t, len(body)) + body + b"\x00" * _pad(len(body))


def _header(msg: Message, body_len: int) -> bytes:
    if len(msg.transaction_id) != TRANSACTION_ID_LEN:
        raise StunError("STUN transaction id must be 12 bytes")
    return _HEADER.pack(msg.message_type, body_len, msg.cookie, msg.transaction_id)


def pack_message(msg: Message, *, integrity_key: bytes | None = None, fingerprint: bool = False) -> bytes:
    """Encode msg. MESSAGE-INTEGRITY (with integrity_key) and FINGERPRINT are computed and appended
    in that order; entries of those names in msg.attributes are ignored."""
    xor_key = struct.pack("!I", msg.cookie) + msg.transaction_id
    body = b"".join(
        _encode_attr(n, v, xor_key)
        for n, v in msg.attributes.items()
        if n not in ("MESSAGE-INTEGRITY", "FINGERPRINT")
    )
    if integrity_key is not None:
        # The MAC covers the header with a length that already counts the MESSAGE-INTEGRITY attribute.
        head = _header(msg, len(body) + 4 + INTEGRITY_LEN)
        mac = hmac.new(integrity_key, head + body, hashlib.sha1).digest()
        body += _ATTR_HEADER.pack(0x0008, INTEGRITY_LEN) + mac
    if fingerprint:
        head = _header(msg, len(body) + 8)
        crc = (binascii.crc32(head + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _ATTR_HEADER.pack(0x8028, 4) + struct.pack("!I", crc)
    return _header(msg, len(body)) + body


def parse_header(data: bytes) -> tuple[int, int, int, bytes]:
    """(message type, body length, cookie, transaction id) of a datagram; checks lengths."""
    if len(data) < HEADER_LEN:
        raise StunError("STUN message is shorter than 20 bytes")
    t, length, cookie, tid = _HEADER.unpack_from(data)
    if t & 0xC000:
        raise StunError("STUN message type has the top two bits set")
    if length % 4:
        raise StunError(f"STUN message length {length} is not a multiple of 4")
    if length != len(data) - HEADER_LEN:
        raise StunError(
            f"STUN message length {length} does not match the {len(data) - HEADER_LEN} bytes sent"
        )
    return t, length, cookie, tid


def parse_message(data: bytes, *, integrity_key: bytes | None = None) -> Message:
    """Decode one datagram. FINGERPRINT, when present, must be last and must match; with
    integrity_key, MESSAGE-INTEGRITY must be present and match. Attributes after
    MESSAGE-INTEGRITY other than FINGERPRINT are ignored (RFC 5389 section 15.4)."""
    t, _, cookie, tid = parse_header(data)
    method, msg_class = split_message_type(t)
    xor_key = struct.pack("!I", cookie) + tid
    attrs: dict[str, Any] = {}
    pos, integrity_at = HEADER_LEN, -1
    while pos < len(data):
        at, alen = _ATTR_HEADER.unpack_from(data, pos)
        row = ATTRIBUTES_BY_TYPE.get(at)
        name = row[1] if row is not None else f"0x{at:04x}"
        end = pos + 4 + alen
        if end > len(data):
            raise StunError(f"STUN attribute {name} is truncated")
        raw = data[pos + 4 : end]
        if name == "FINGERPRINT":
            _check_fingerprint(data, pos, raw)
            if end + _pad(alen) != len(data):
                raise StunError("STUN FINGERPRINT is not the last attribute")
        if integrity_at < 0 or name == "FINGERPRINT":
            attrs.setdefault(name, row[3](raw, name, xor_key) if row is not None else raw)
        if name == "MESSAGE-INTEGRITY" and integrity_at < 0:
            integrity_at = pos
        pos = end + _pad(alen)
    if integrity_key is not None:
        _check_integrity(data, integrity_at, integrity_key)
    return Message(method, msg_class, tid, attrs, cookie)


def _check_fingerprint(data: bytes, pos: int, raw: bytes) -> None:
    if len(raw) != 4:
        raise StunError(f"STUN FINGERPRINT has a bad length {len(raw)}")
    head = data[:2] + struct.pack("!H", pos + 8 - HEADER_LEN) + data[4:HEADER_LEN]
    want = (binascii.crc32(head + data[HEADER_LEN:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    if struct.unpack("!I", raw)[0] != want:
        raise StunError("STUN FINGERPRINT does not match")


def _check_integrity(data: bytes, pos: int, key: bytes) -> None:
    if pos < 0:
        raise StunError("STUN message has no MESSAGE-INTEGRITY")
    alen = _ATTR_HEADER.unpack_from(data, pos)[1]
    if alen != INTEGRITY_LEN:
        raise StunError(f"STUN MESSAGE-INTEGRITY has a bad length {alen}")
    head = data[:2] + struct.pack("!H", pos + 4 + INTEGRITY_LEN - HEADER_LEN) + data[4:HEADER_LEN]
    mac = hmac.new(key, head + data[HEADER_LEN:pos], hashlib.sha1).digest()
    if not hmac.compare_digest(mac, data[pos + 4 : pos + 4 + INTEGRITY_LEN]):
        raise StunError("STUN MESSAGE-INTEGRITY does not match")


# --- Binding helpers ------------------------------------------------------------------------------


def new_transaction_id() -> bytes:
    return os.urandom(TRANSACTION_ID_LEN)


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 5389 section 7.3): top bits zero and the magic cookie."""
    return (
        len(data) >= HEADER_LEN
        and data[0] & 0xC0 == 0
        and struct.unpack_from("!I", data, 4)[0] == MAGIC_COOKIE
    )


def binding_request(transaction_id: bytes, software: str = "") -> bytes:
    """An RFC 5389 Binding request with FINGERPRINT (and SOFTWARE when given)."""
    attrs: dict[str, Any] = {"SOFTWARE": software} if software else {}
    return pack_message(
        Message(Method.BINDING, MessageClass.REQUEST, transaction_id, attrs), fingerprint=True
    )


def binding_response(request: Message, observed: Address, software: str = "") -> bytes:
    """The success response to a Binding request seen from ``observed``.

    RFC 5389 clients get XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, SOFTWARE and FINGERPRINT. RFC 3489
    clients (no magic cookie) get MAPPED-ADDRESS only: they reject comprehension-required attributes they
    do not know, and XOR-MAPPED-ADDRESS (0x0020) is one."""
    attrs: dict[str, Any] = {}
    if request.is_rfc5389:
        attrs["XOR-MAPPED-ADDRESS"] = observed
    attrs["MAPPED-ADDRESS"] = observed
    if software and request.is_rfc5389:
        # RFC 3489 clients read 0x8022 as SERVER and require a length that is a multiple of 4.
        attrs["SOFTWARE"] = software
    msg = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id, attrs, request.cookie)
    return pack_message(msg, fingerprint=request.is_rfc5389)


def mapped_address(msg: Message) -> Address | None:
    """The reflexive address a response reports: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS."""
    addr = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get("MAPPED-ADDRESS")
    return addr if isinstance(addr, tuple) else None


def parse_binding_response(data: bytes, transaction_id: bytes) -> Address:
    """The mapped address of a Binding success response to our request ``transaction_id``."""
    msg = parse_message(data)
    if msg.transaction_id != transaction_id:
        raise StunError("STUN response is for another transaction")
    if msg.method != Method.BINDING or msg.msg_class != MessageClass.SUCCESS:
        if msg.msg_class == MessageClass.ERROR and "ERROR-CODE" in msg.attributes:
            code, reason = msg.attributes["ERROR-CODE"]
            raise StunError(f"STUN Binding failed: {code} {reason}")
        raise StunError("STUN message is not a Binding success response")
    addr = mapped_address(msg)
    if addr is None:
        raise StunError("STUN Binding response has no mapped address")
    return addr
