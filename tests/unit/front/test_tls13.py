"""cvlan-front's TLS 1.3 record layer against itself: two ends with swapped secrets. (Against OpenSSL
it is tested end to end in tests/integration/test_front.py.)"""

from __future__ import annotations

import os

import pytest

from cvlan.front import tls13


def pair(suite: str = "TLS_AES_128_GCM_SHA256") -> tuple[tls13.RecordLayer, tls13.RecordLayer]:
    s = tls13.SUITES[suite]
    c, v = os.urandom(s.hash.digest_size), os.urandom(s.hash.digest_size)
    return tls13.RecordLayer(s, c, v), tls13.RecordLayer(s, v, c)


@pytest.mark.parametrize("suite", sorted(tls13.SUITES))
def test_round_trip_in_pieces_and_many_records(suite: str) -> None:
    server, client = pair(suite)
    data = os.urandom(50_000)
    wire = server.seal(data)
    assert wire.count(b"\x17\x03\x03") >= 4  # 16 KB of plaintext per record at most
    got = b""
    for i in range(0, len(wire), 777):  # arrives in arbitrary pieces
        plain, reply = client.open(wire[i : i + 777])
        got += plain
        assert reply == b""
    assert got == data and client.pending() == 0


def test_tampered_record_is_refused() -> None:
    server, client = pair()
    wire = bytearray(server.seal(b"hello"))
    wire[-1] ^= 1
    with pytest.raises(tls13.TLSAlert) as e:
        client.open(bytes(wire))
    assert e.value.alert == tls13.BAD_RECORD_MAC


def test_replayed_record_is_refused() -> None:
    server, client = pair()
    wire = server.seal(b"hello")
    assert client.open(wire)[0] == b"hello"
    with pytest.raises(tls13.TLSAlert):
        client.open(wire)


def test_unprotected_and_oversized_records_are_refused() -> None:
    _, client = pair()
    with pytest.raises(tls13.TLSAlert) as e:
        client.open(b"\x16\x03\x03\x00\x01\x00")
    assert e.value.alert == tls13.UNEXPECTED_MESSAGE
    with pytest.raises(tls13.TLSAlert) as e:
        client.open(b"\x17\x03\x03\x48\x01")
    assert e.value.alert == tls13.RECORD_OVERFLOW


def test_close_notify_and_alerts_end_the_connection() -> None:
    server, client = pair()
    with pytest.raises(tls13.TLSAlert) as e:
        client.open(server.alert(tls13.CLOSE_NOTIFY))
    assert e.value.alert is None and "close_notify" in str(e.value)


def test_key_update_requested_is_answered_and_both_keys_change() -> None:
    server, client = pair()
    # the client asks for an update: [KeyUpdate, length 1, update_requested]
    request = client.seal(bytes([tls13.HS_KEY_UPDATE, 0, 0, 1, 1]), tls13.CT_HANDSHAKE)
    client.write.update()
    plain, reply = server.open(request + client.seal(b"after"))
    assert plain == b"after" and reply
    # the answer is under the server's old key; what follows under its new one
    assert client.open(reply) == (b"", b"")
    assert client.open(server.seal(b"new keys"))[0] == b"new keys"


def test_other_post_handshake_messages_are_refused() -> None:
    server, client = pair()
    ticket = client.seal(bytes([4, 0, 0, 2, 0, 0]), tls13.CT_HANDSHAKE)  # NewSessionTicket
    with pytest.raises(tls13.TLSAlert) as e:
        server.open(ticket)
    assert e.value.alert == tls13.UNEXPECTED_MESSAGE


def _sealed(sender: tls13.RecordLayer, inner: bytes) -> bytes:
    """One protected record whose inner plaintext (content, type, padding) is `inner` as given."""
    header = bytes([tls13.CT_APPLICATION_DATA, 3, 3]) + (len(inner) + tls13.TAG).to_bytes(2, "big")
    w = sender.write
    return header + w.aead().encrypt(w.nonce(), inner, header)


def test_inner_plaintext_over_the_limit_is_refused_even_when_it_is_padding() -> None:
    """RFC 8446 5.4: 2^14 bytes of content, the type byte and any padding at most 2^14 + 1 bytes."""
    server, client = pair()
    at_limit = b"a" * tls13.MAX_PLAINTEXT + bytes([tls13.CT_APPLICATION_DATA])
    assert server.open(_sealed(client, at_limit))[0] == b"a" * tls13.MAX_PLAINTEXT
    with pytest.raises(tls13.TLSAlert) as e:
        server.open(_sealed(client, at_limit + bytes(200)))  # the content is still 2^14 bytes
    assert e.value.alert == tls13.RECORD_OVERFLOW


def test_empty_handshake_record_is_refused() -> None:
    """RFC 8446 5.1: handshake records are never empty (application data may be)."""
    server, client = pair()
    assert server.open(client.seal(b"")) == (b"", b"")
    with pytest.raises(tls13.TLSAlert) as e:
        server.open(client.seal(b"", tls13.CT_HANDSHAKE))
    assert e.value.alert == tls13.UNEXPECTED_MESSAGE


def test_data_before_close_notify_in_the_same_read_is_kept() -> None:
    server, client = pair()
    with pytest.raises(tls13.PeerClosed) as e:
        server.open(client.seal(b"last request") + client.alert(tls13.CLOSE_NOTIFY))
    assert e.value.alert is None and e.value.plain == b"last request"
    server, client = pair()
    with pytest.raises(tls13.TLSAlert) as e:  # an error alert: the connection just ends
        server.open(client.seal(b"request") + client.alert(tls13.DECODE_ERROR))
    assert not isinstance(e.value, tls13.PeerClosed)


def test_malformed_alert_is_refused() -> None:
    server, client = pair()
    with pytest.raises(tls13.TLSAlert) as e:
        server.open(client.seal(b"\x01", tls13.CT_ALERT))
    assert e.value.alert == tls13.DECODE_ERROR
