"""Relay frame codec: golden bytes, round trips and one test per error message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvlan.wire import relayproto as rp
from cvlan.wire.relayproto import FrameError, FrameType, PeerGoneReason

K1 = bytes(range(32))


def test_golden_send_packet() -> None:
    assert rp.send_packet(K1, b"\x04abc") == b"\x02\x00\x00\x00\x24" + K1 + b"\x04abc"


def test_golden_server_info() -> None:
    data = rp.pack_frame(rp.ServerInfo(1, 30, "eu"))
    assert data == bytes.fromhex("010000000501001e") + b"eu"
    assert rp.parse_frame(data) == rp.ServerInfo(1, 30, "eu")


def test_golden_peer_gone_and_keepalive() -> None:
    assert rp.pack_frame(rp.PeerGone(K1, PeerGoneReason.REFUSED)) == b"\x05\x00\x00\x00\x21" + K1 + b"\x03"
    assert rp.pack_frame(rp.Keepalive()) == b"\x04\x00\x00\x00\x00"


def test_recv_packet_helper_matches_the_table() -> None:
    assert rp.recv_packet(K1, b"xyz") == rp.pack_frame(rp.RecvPacket(K1, b"xyz"))


def test_reserved_type_zero_is_not_a_frame() -> None:
    with pytest.raises(FrameError, match=r"^relay frame type 0x00 is unknown$"):
        rp.parse_frame(bytes(5))


keys = st.binary(min_size=32, max_size=32)
frames = st.one_of(
    st.builds(rp.ServerInfo, st.integers(0, 255), st.integers(0, 65535), st.text(max_size=20)),
    st.builds(rp.SendPacket, keys, st.binary(max_size=2000)),
    st.builds(rp.RecvPacket, keys, st.binary(max_size=2000)),
    st.just(rp.Keepalive()),
    st.builds(rp.PeerGone, keys, st.sampled_from(list(PeerGoneReason))),
    st.builds(rp.Ping, st.binary(min_size=8, max_size=8)),
    st.builds(rp.Pong, st.binary(min_size=8, max_size=8)),
)


@given(frames)
def test_round_trip(frame: rp.Frame) -> None:
    assert rp.parse_frame(rp.pack_frame(frame)) == frame


@given(st.binary(max_size=80))
def test_parse_raises_only_frame_error(data: bytes) -> None:
    try:
        rp.parse_frame(data)
    except FrameError:
        pass


def test_max_packet_is_accepted() -> None:
    f = rp.SendPacket(K1, b"\x00" * rp.MAX_PACKET)
    assert rp.parse_frame(rp.pack_frame(f)) == f


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02\x00\x00", "relay frame header is shorter than 5 bytes"),
        (b"\x09\x00\x00\x00\x00", "relay frame type 0x09 is unknown"),
        (b"\x04\x00\x00\x00\x02", "relay frame length 2 does not match the 0 bytes after the header"),
        (b"\x04\x00\x00\x00\x01\x00", "relay KEEPALIVE frame body has a bad length 1"),
        (b"\x02\x00\x00\x00\x01\x00", "relay SEND_PACKET frame body is shorter than 32 bytes"),
        (b"\x03\x00\x00\x00\x00", "relay RECV_PACKET frame body is shorter than 32 bytes"),
        (b"\x01\x00\x00\x00\x01\x01", "relay SERVER_INFO frame body is shorter than 3 bytes"),
        (b"\x01\x00\x00\x00\x04\x01\x00\x01\xff", "relay SERVER_INFO region is not UTF-8"),
        (b"\x05\x00\x00\x00\x21" + K1 + b"\x00", "relay PEER_GONE reason 0 is unknown"),
        (b"\x05\x00\x00\x00\x20" + K1, "relay PEER_GONE frame body has a bad length 32"),
        (b"\x06\x00\x00\x00\x01\x00", "relay PING frame body has a bad length 1"),
        (b"\x07\x00\x00\x00\x01\x00", "relay PONG frame body has a bad length 1"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(FrameError) as e:
        rp.parse_frame(data)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (rp.SendPacket(b"short", b""), "relay key must be 32 bytes"),
        (rp.RecvPacket(K1, b"\x00" * (rp.MAX_PACKET + 1)), "relay packet is longer than 65535 bytes"),
        (rp.Ping(b"1234567"), "relay ping data must be 8 bytes"),
    ],
)
def test_pack_errors(frame: rp.Frame, message: str) -> None:
    with pytest.raises(FrameError) as e:
        rp.pack_frame(frame)
    assert str(e.value) == message


def test_frame_types_are_stable() -> None:
    # Wire values are never reused (STYLE C2): changing one of these breaks deployed nodes.
    assert {t.name: t.value for t in FrameType} == {
        "SERVER_INFO": 1,
        "SEND_PACKET": 2,
        "RECV_PACKET": 3,
        "KEEPALIVE": 4,
        "PEER_GONE": 5,
        "PING": 6,
        "PONG": 7,
    }
