"""STUN codec: RFC 5769 test vectors, round trips, and one test per error message."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvlan.wire import stun
from cvlan.wire.stun import Message, MessageClass, Method, StunError

# RFC 5769 section 2: short-term credential password for 2.1-2.3.
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# 2.1 Sample Request (SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY, FINGERPRINT).
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
# 2.2 Sample IPv4 Response: XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
# 2.3 Sample IPv6 Response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)


def test_rfc5769_request() -> None:
    msg = stun.parse_message(REQUEST, integrity_key=PASSWORD)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (Method.BINDING, MessageClass.REQUEST, TID)
    assert msg.attributes["SOFTWARE"] == "STUN test client"
    assert msg.attributes["PRIORITY"] == 0x6E0001FF
    assert msg.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    # USERNAME is padded with spaces in the vector: padding is not part of the value.
    assert msg.attributes["USERNAME"] == "evtj:h6vY"
    assert msg.attributes["FINGERPRINT"] == 0xE57A3BCF


def test_rfc5769_ipv4_response() -> None:
    msg = stun.parse_message(RESPONSE_V4, integrity_key=PASSWORD)
    assert msg.attributes["SOFTWARE"] == "test vector"
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert stun.parse_binding_response(RESPONSE_V4, TID) == ("192.0.2.1", 32853)


def test_rfc5769_ipv6_response() -> None:
    msg = stun.parse_message(RESPONSE_V6, integrity_key=PASSWORD)
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


@pytest.mark.parametrize("vector", [REQUEST, RESPONSE_V4, RESPONSE_V6])
def test_repacking_rfc5769_vectors_reproduces_integrity_and_fingerprint(vector: bytes) -> None:
    msg = stun.parse_message(vector)
    again = stun.pack_message(msg, integrity_key=PASSWORD, fingerprint=True)
    # Only the pad bytes differ (the vectors pad with spaces, we pad with zeros), so both checks
    # pass on the re-encoding and the parsed values are the same.
    reparsed = stun.parse_message(again, integrity_key=PASSWORD)
    assert {
        k: v for k, v in reparsed.attributes.items() if k not in ("MESSAGE-INTEGRITY", "FINGERPRINT")
    } == {k: v for k, v in msg.attributes.items() if k not in ("MESSAGE-INTEGRITY", "FINGERPRINT")}
    assert len(again) == len(vector)


def test_repacking_the_ipv4_response_is_byte_exact_once_padding_matches() -> None:
    msg = stun.parse_message(RESPONSE_V4)
    again = stun.pack_message(msg, integrity_key=PASSWORD, fingerprint=True)
    # SOFTWARE "test vector" is 11 bytes: the vector's one pad byte is a space, ours is a zero.
    assert again == RESPONSE_V4[:35] + b"\x00" + RESPONSE_V4[36:48] + again[48:]
    assert again[52:72] != RESPONSE_V4[52:72]  # so the MAC differs, as it must


def test_message_type_interleaving() -> None:
    assert stun.message_type(Method.BINDING, MessageClass.SUCCESS) == 0x0101
    assert stun.message_type(Method.BINDING, MessageClass.ERROR) == 0x0111
    assert stun.message_type(0xFFF, MessageClass.ERROR) == 0x3FFF
    assert stun.split_message_type(0x3FFF) == (0xFFF, MessageClass.ERROR)


def test_binding_round_trip_rfc5389_and_legacy_client() -> None:
    req = stun.parse_message(stun.binding_request(TID, software="cvlan"))
    assert req.is_rfc5389 and req.attributes["SOFTWARE"] == "cvlan"
    resp = stun.binding_response(req, ("198.51.100.1", 40001))
    assert stun.parse_binding_response(resp, TID) == ("198.51.100.1", 40001)
    # An RFC 3489 request: 16-byte transaction id, no cookie. The answer echoes it, no XOR attribute.
    legacy = struct.pack("!HHI12s", 0x0001, 0, 0x01020304, TID)
    lreq = stun.parse_message(legacy)
    assert not lreq.is_rfc5389
    lresp = stun.parse_message(stun.binding_response(lreq, ("203.0.113.1", 5), software="cvlan-relay"))
    assert lresp.cookie == 0x01020304 and lresp.transaction_id == TID
    assert list(lresp.attributes) == ["MAPPED-ADDRESS"]
    assert stun.mapped_address(lresp) == ("203.0.113.1", 5)


def test_is_stun() -> None:
    assert stun.is_stun(RESPONSE_V4)
    assert not stun.is_stun(RESPONSE_V4[:19])
    assert not stun.is_stun(b"\x01" + b"\x00" * 19)  # a WireGuard handshake initiation starts 0x01 00 00 00
    assert not stun.is_stun(b"\xc0" + RESPONSE_V4[1:])


def test_unknown_attribute_is_kept_raw_and_repacked() -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, TID, {"0x7fff": b"abc", "SOFTWARE": "x"})
    again = stun.parse_message(stun.pack_message(msg))
    assert again.attributes == {"0x7fff": b"abc", "SOFTWARE": "x"}


def test_attributes_after_integrity_are_ignored() -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, TID, {"SOFTWARE": "a"})
    data = stun.pack_message(msg, integrity_key=b"k")
    extra = struct.pack("!HH", 0x8022, 4) + b"evil"
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + extra
    assert stun.parse_message(data).attributes["SOFTWARE"] == "a"


def test_error_code_round_trip() -> None:
    msg = Message(Method.BINDING, MessageClass.ERROR, TID, {"ERROR-CODE": (420, "Unknown Attribute")})
    parsed = stun.parse_message(stun.pack_message(msg))
    assert parsed.attributes["ERROR-CODE"] == (420, "Unknown Attribute")
    with pytest.raises(StunError, match=r"^STUN Binding failed: 420 Unknown Attribute$"):
        stun.parse_binding_response(stun.pack_message(msg), TID)


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: str(a))).flatmap(
    lambda ip: st.tuples(st.just(ip), st.integers(0, 65535))
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    tid=st.binary(min_size=12, max_size=12),
    method=st.integers(0, 0xFFF),
    cls=st.sampled_from(list(MessageClass)),
    xaddr=addresses,
    maddr=addresses,
    software=texts,
    prio=st.integers(0, 2**32 - 1),
    raw=st.binary(max_size=30),
    key=st.one_of(st.none(), st.binary(min_size=1, max_size=32)),
    fp=st.booleans(),
)
def test_round_trip_property(
    tid: bytes,
    method: int,
    cls: MessageClass,
    xaddr: stun.Address,
    maddr: stun.Address,
    software: str,
    prio: int,
    raw: bytes,
    key: bytes | None,
    fp: bool,
) -> None:
    attrs: dict[str, Any] = {
        "XOR-MAPPED-ADDRESS": xaddr,
        "MAPPED-ADDRESS": maddr,
        "SOFTWARE": software,
        "PRIORITY": prio,
        "0x7ffe": raw,
    }
    data = stun.pack_message(Message(method, cls, tid, attrs), integrity_key=key, fingerprint=fp)
    back = stun.parse_message(data, integrity_key=key)
    assert (back.method, back.msg_class, back.transaction_id) == (method, cls, tid)
    assert {k: v for k, v in back.attributes.items() if k in attrs} == attrs
    assert ("FINGERPRINT" in back.attributes) == fp


@given(st.binary(max_size=200))
def test_parse_never_raises_anything_but_stun_error(data: bytes) -> None:
    try:
        stun.parse_message(data)
    except StunError:
        pass


# --- one test per error message -------------------------------------------------------------------


def _with_attr(t: int, value: bytes) -> bytes:
    body = struct.pack("!HH", t, len(value)) + value + b"\x00" * ((4 - len(value) % 4) % 4)
    return struct.pack("!HHI12s", 0x0101, len(body), stun.MAGIC_COOKIE, TID) + body


def _err(data: bytes, message: str, **kw: Any) -> None:
    with pytest.raises(StunError) as e:
        stun.parse_message(data, **kw)
    assert str(e.value) == message


def test_error_short() -> None:
    _err(b"\x00" * 19, "STUN message is shorter than 20 bytes")


def test_error_top_bits() -> None:
    _err(b"\x80" + RESPONSE_V4[1:], "STUN message type has the top two bits set")


def test_error_length_not_multiple_of_4() -> None:
    _err(RESPONSE_V4[:3] + b"\x3d" + RESPONSE_V4[4:], "STUN message length 61 is not a multiple of 4")


def test_error_length_mismatch() -> None:
    _err(RESPONSE_V4[:-4], "STUN message length 60 does not match the 56 bytes sent")


def test_error_attribute_truncated() -> None:
    data = _with_attr(0x8022, b"abcd")
    data = data[:22] + struct.pack("!H", 9) + data[24:]
    _err(data, "STUN attribute SOFTWARE is truncated")


def test_error_bad_address_length() -> None:
    _err(_with_attr(0x0020, b"\x00\x01\x00"), "STUN XOR-MAPPED-ADDRESS has a bad length 3")


def test_error_bad_ipv4_length() -> None:
    _err(_with_attr(0x0001, b"\x00\x01\x00\x01" + b"\x01" * 16), "STUN MAPPED-ADDRESS has a bad length 20")


def test_error_unknown_family() -> None:
    _err(
        _with_attr(0x0001, b"\x00\x03\x00\x01\x01\x02\x03\x04"),
        "STUN MAPPED-ADDRESS has an unknown address family 3",
    )


def test_error_text_not_utf8() -> None:
    _err(_with_attr(0x8022, b"\xff\xfe"), "STUN SOFTWARE is not UTF-8")


def test_error_fixed_int_length() -> None:
    _err(_with_attr(0x0024, b"\x00\x01"), "STUN PRIORITY has a bad length 2")


def test_error_error_code_length() -> None:
    _err(_with_attr(0x0009, b"\x00\x04"), "STUN ERROR-CODE has a bad length 2")


def test_error_unknown_attributes_length() -> None:
    _err(_with_attr(0x000A, b"\x00\x01\x02"), "STUN UNKNOWN-ATTRIBUTES has a bad length 3")


def test_error_fingerprint_mismatch() -> None:
    _err(RESPONSE_V4[:-1] + b"\x00", "STUN FINGERPRINT does not match")


def test_error_fingerprint_bad_length() -> None:
    _err(_with_attr(0x8028, b"\x00\x00"), "STUN FINGERPRINT has a bad length 2")


def test_error_fingerprint_not_last() -> None:
    msg = stun.pack_message(Message(Method.BINDING, MessageClass.REQUEST, TID), fingerprint=True)
    # The CRC covers only what precedes it, so it still matches; only its position is wrong.
    extra = struct.pack("!HH", 0x8022, 4) + b"abcd"
    data = msg[:2] + struct.pack("!H", len(msg) - 20 + 8) + msg[4:] + extra
    _err(data, "STUN FINGERPRINT is not the last attribute")


def test_error_integrity_mismatch() -> None:
    _err(RESPONSE_V4, "STUN MESSAGE-INTEGRITY does not match", integrity_key=b"wrong")


def test_error_integrity_missing() -> None:
    _err(stun.binding_request(TID), "STUN message has no MESSAGE-INTEGRITY", integrity_key=PASSWORD)


def test_error_integrity_bad_length() -> None:
    _err(_with_attr(0x0008, b"\x00" * 8), "STUN MESSAGE-INTEGRITY has a bad length 8", integrity_key=b"k")


def test_error_response_other_transaction() -> None:
    with pytest.raises(StunError, match=r"^STUN response is for another transaction$"):
        stun.parse_binding_response(RESPONSE_V4, bytes(12))


def test_error_not_a_binding_success() -> None:
    with pytest.raises(StunError, match=r"^STUN message is not a Binding success response$"):
        stun.parse_binding_response(stun.binding_request(TID), TID)


def test_error_no_mapped_address() -> None:
    data = stun.pack_message(Message(Method.BINDING, MessageClass.SUCCESS, TID))
    with pytest.raises(StunError, match=r"^STUN Binding response has no mapped address$"):
        stun.parse_binding_response(data, TID)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"MAPPED-ADDRESS": ("1.2.3.4", 70000)}, "STUN port 70000 is out of range"),
        ({"MAPPED-ADDRESS": ("nope", 1)}, "STUN address 'nope' is not an IP address"),
        ({"PRIORITY": 2**32}, "STUN value 4294967296 does not fit in 4 bytes"),
        ({"ERROR-CODE": (200, "OK")}, "STUN error code 200 is out of range"),
        ({"NO-SUCH": 1}, "STUN attribute 'NO-SUCH' is unknown"),
        ({"SOFTWARE": "x" * 70000}, "STUN SOFTWARE is longer than 65535 bytes"),
    ],
)
def test_pack_errors(attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(StunError) as e:
        stun.pack_message(Message(Method.BINDING, MessageClass.REQUEST, TID, attrs))
    assert str(e.value) == message


def test_pack_error_transaction_id_length() -> None:
    with pytest.raises(StunError, match=r"^STUN transaction id must be 12 bytes$"):
        stun.pack_message(Message(Method.BINDING, MessageClass.REQUEST, b"short"))
