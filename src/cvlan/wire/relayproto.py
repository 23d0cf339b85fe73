"""Relay frame codec: what a node and a cvlan-relay exchange inside WebSocket binary messages.

Every frame is a 5-byte header (1 byte type, 4 bytes big-endian body length) and a body; one
WebSocket message carries exactly one frame. Packets are WireGuard ciphertext: the relay reads
only the 32-byte key in front of them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

PROTOCOL_VERSION = 1
# History:
#   - 1: 2026-11-26: initial frames (SERVER_INFO, SEND/RECV_PACKET, KEEPALIVE, PEER_GONE, PING/PONG)
WS_PATH = "/v1/relay"
"""The HTTPS path a node upgrades to a WebSocket."""
WS_PROTOCOL = "cvlan-relay.v1"
FRAME_HEADER_LEN = 5
KEY_LEN = 32
MAX_PACKET = 65535
PING_LEN = 8
CLOSE_REPLACED = 4001
"""WebSocket close code: a newer connection with the same node key took this one's place."""
_HEADER = struct.Struct("!BI")


class FrameError(ValueError):
    """Bytes that are not one well-formed relay frame, or a value that cannot be encoded."""


class FrameType(IntEnum):
    # 0x00 reserved: never used, so that a zeroed buffer is never a valid frame.
    SERVER_INFO = 0x01  # 1B protocol version + 2B keepalive seconds + region (UTF-8)
    SEND_PACKET = 0x02  # 32B destination key + packet (node -> relay)
    RECV_PACKET = 0x03  # 32B source key + packet (relay -> node)
    KEEPALIVE = 0x04  # empty, either way
    PEER_GONE = 0x05  # 32B key + 1B PeerGoneReason (relay -> node)
    PING = 0x06  # 8B opaque, either way; answered with PONG carrying the same bytes
    PONG = 0x07  # 8B echoed


class PeerGoneReason(IntEnum):
    # 0 reserved.
    NOT_HERE = 1
    """The destination key has no connection on this relay."""
    DISCONNECTED = 2
    """The destination was connected and has gone."""
    REFUSED = 3
    """The destination is not in the sender's CVLAN."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: int
    keepalive_s: int
    region: str


@dataclass(frozen=True, slots=True)
class SendPacket:
    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class RecvPacket:
    src: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclass(frozen=True, slots=True)
class PeerGone:
    key: bytes
    reason: PeerGoneReason


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


Frame = ServerInfo | SendPacket | RecvPacket | Keepalive | PeerGone | Ping | Pong


def _key(k: bytes) -> bytes:
    if len(k) != KEY_LEN:
        raise FrameError("relay key must be 32 bytes")
    return k


def _packet(p: bytes) -> bytes:
    if len(p) > MAX_PACKET:
        raise FrameError("relay packet is longer than 65535 bytes")
    return p


def _need(name: str, body: bytes, n: int, exact: bool) -> None:
    if exact and len(body) != n:
        raise FrameError(f"relay {name} frame body has a bad length {len(body)}")
    if len(body) < n:
        raise FrameError(f"relay {name} frame body is shorter than {n} bytes")


def _pack_info(f: ServerInfo) -> bytes:
    return struct.pack("!BH", f.version, f.keepalive_s) + f.region.encode()


def _parse_info(b: bytes) -> ServerInfo:
    _need("SERVER_INFO", b, 3, False)
    version, keepalive = struct.unpack_from("!BH", b)
    try:
        region = b[3:].decode()
    except UnicodeDecodeError as e:
        raise FrameError("relay SERVER_INFO region is not UTF-8") from e
    return ServerInfo(version, keepalive, region)


def _parse_send(b: bytes) -> SendPacket:
    _need("SEND_PACKET", b, KEY_LEN, False)
    return SendPacket(b[:KEY_LEN], b[KEY_LEN:])


def _parse_recv(b: bytes) -> RecvPacket:
    _need("RECV_PACKET", b, KEY_LEN, False)
    return RecvPacket(b[:KEY_LEN], b[KEY_LEN:])


def _parse_keepalive(b: bytes) -> Keepalive:
    _need("KEEPALIVE", b, 0, True)
    return Keepalive()


def _parse_gone(b: bytes) -> PeerGone:
    _need("PEER_GONE", b, KEY_LEN + 1, True)
    try:
        reason = PeerGoneReason(b[KEY_LEN])
    except ValueError as e:
        raise FrameError(f"relay PEER_GONE reason {b[KEY_LEN]} is unknown") from e
    return PeerGone(b[:KEY_LEN], reason)


def _parse_ping(b: bytes) -> Ping:
    _need("PING", b, PING_LEN, True)
    return Ping(b)


def _parse_pong(b: bytes) -> Pong:
    _need("PONG", b, PING_LEN, True)
    return Pong(b)


def _ping_data(d: bytes) -> bytes:
    if len(d) != PING_LEN:
        raise FrameError("relay ping data must be 8 bytes")
    return d


FRAMES: list[tuple[FrameType, type[Any], Callable[[Any], bytes], Callable[[bytes], Any]]] = [
    (FrameType.SERVER_INFO, ServerInfo, _pack_info, _parse_info),
    (FrameType.SEND_PACKET, SendPacket, lambda f: _key(f.dst) + _packet(f.packet), _parse_send),
    (FrameType.RECV_PACKET, RecvPacket, lambda f: _key(f.src) + _packet(f.packet), _parse_recv),
    (FrameType.KEEPALIVE, Keepalive, lambda f: b"", _parse_keepalive),
    (FrameType.PEER_GONE, PeerGone, lambda f: _key(f.key) + bytes([f.reason]), _parse_gone),
    (FrameType.PING, Ping, lambda f: _ping_data(f.data), _parse_ping),
    (FrameType.PONG, Pong, lambda f: _ping_data(f.data), _parse_pong),
]
_BY_TYPE = {row[0]: row for row in FRAMES}
_BY_CLASS = {row[1]: row for row in FRAMES}


def pack_frame(frame: Frame) -> bytes:
    ftype, _, pack, _ = _BY_CLASS[type(frame)]
    body = pack(frame)
    return _HEADER.pack(ftype, len(body)) + body


def parse_frame_header(b: bytes) -> tuple[FrameType, int]:
    if len(b) < FRAME_HEADER_LEN:
        raise FrameError("relay frame header is shorter than 5 bytes")
    t, length = _HEADER.unpack_from(b)
    try:
        return FrameType(t), length
    except ValueError as e:
        raise FrameError(f"relay frame type 0x{t:02x} is unknown") from e


def parse_frame(b: bytes) -> Frame:
    """Decode exactly one frame."""
    ftype, length = parse_frame_header(b)
    got = len(b) - FRAME_HEADER_LEN
    if length != got:
        raise FrameError(f"relay frame length {length} does not match the {got} bytes after the header")
    frame: Frame = _BY_TYPE[ftype][3](b[FRAME_HEADER_LEN:])
    return frame


# --- hot path helpers: the relay forwards without building frame objects ------------------------


def send_packet(dst: bytes, packet: bytes) -> bytes:
    """A SEND_PACKET frame (node -> relay)."""
    return pack_frame(SendPacket(dst, packet))


def recv_packet(src: bytes, packet: bytes) -> bytes:
    """A RECV_PACKET frame (relay -> node)."""
    return _HEADER.pack(FrameType.RECV_PACKET, KEY_LEN + len(packet)) + _key(src) + _packet(packet)
