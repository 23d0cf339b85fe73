"""The TLS 1.3 record layer of an established connection (RFC 8446 section 5), for the front.

OpenSSL does the handshake -- key exchange, the server's certificate, the client certificate and its
verification. Once the handshake is done, the connection's state reduces to two traffic secrets and
two sequence numbers, and this module protects and opens the records with them, the way kernel TLS
takes a connection over from a user-space library. OpenSSL's per-connection object (about 24 KB
with a verified client certificate) is freed; what remains is a few hundred bytes.

What is done here: application data in both directions, alerts (close_notify and errors end the
connection; application data that came before a close_notify is handed over with it), and KeyUpdate
from the peer (the read key is updated and, when the peer asks, ours too). Any other post-handshake
message or record type, an empty handshake record, and an inner plaintext over 2^14 + 1 bytes
(content, type and padding: RFC 8446 section 5.4) are protocol errors."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
HS_KEY_UPDATE = 24
MAX_PLAINTEXT = 2**14
MAX_CIPHERTEXT = 2**14 + 256
HEADER = 5
SEQ_LIMIT = 2**64 - 1
TAG = 16

Aead = AESGCM | ChaCha20Poly1305


class Suite:
    """A TLS 1.3 cipher suite: its AEAD, key length and hash."""

    __slots__ = ("name", "aead", "key_len", "hash")

    def __init__(self, name: str, aead: Callable[[bytes], Aead], key_len: int, hash_: hashes.HashAlgorithm):
        self.name = name
        self.aead = aead
        self.key_len = key_len
        self.hash = hash_


SUITES = {
    s.name: s
    for s in (
        Suite("TLS_AES_128_GCM_SHA256", AESGCM, 16, hashes.SHA256()),
        Suite("TLS_AES_256_GCM_SHA384", AESGCM, 32, hashes.SHA384()),
        Suite("TLS_CHACHA20_POLY1305_SHA256", ChaCha20Poly1305, 32, hashes.SHA256()),
    )
}


class TLSAlert(Exception):
    """The connection must end: `alert` is what to send the peer (None: nothing, it closed)."""

    def __init__(self, message: str, alert: int | None) -> None:
        super().__init__(message)
        self.alert = alert


class PeerClosed(TLSAlert):
    """The peer sent close_notify: it sends nothing more. `plain` is the application data that came
    before it (its last requests, still to be answered)."""

    def __init__(self, plain: bytes) -> None:
        super().__init__("peer closed (close_notify)", None)
        self.plain = plain


# alert descriptions (RFC 8446 section 6)
CLOSE_NOTIFY = 0
UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
RECORD_OVERFLOW = 22
DECODE_ERROR = 50


def hkdf_expand_label(suite: Suite, secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(suite.hash, length, info).derive(secret)


class Direction:
    """One direction's traffic secret, key and sequence number.

    The AEAD object is made for each record from the key, not kept: a kept one holds about 2.5 KB of
    initialised cipher contexts, two thirds of an idle connection's memory, and making it costs
    about 1.5 us."""

    __slots__ = ("suite", "secret", "key", "iv", "seq")

    def __init__(self, suite: Suite, secret: bytes, seq: int = 0) -> None:
        self.suite = suite
        self.seq = seq
        self._set(secret)

    def _set(self, secret: bytes) -> None:
        self.secret = secret
        self.key = hkdf_expand_label(self.suite, secret, b"key", self.suite.key_len)
        self.iv = int.from_bytes(hkdf_expand_label(self.suite, secret, b"iv", 12), "big")

    def update(self) -> None:
        """The next generation of traffic secret (KeyUpdate); the sequence number starts again."""
        self._set(hkdf_expand_label(self.suite, self.secret, b"traffic upd", len(self.secret)))
        self.seq = 0

    def aead(self) -> Aead:
        return self.suite.aead(self.key)

    def nonce(self) -> bytes:
        if self.seq >= SEQ_LIMIT:
            raise TLSAlert("sequence number exhausted", CLOSE_NOTIFY)
        n = (self.iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        return n


class RecordLayer:
    """Both directions of an established TLS 1.3 connection."""

    __slots__ = ("read", "write", "_buf")

    def __init__(self, suite: Suite, read_secret: bytes, write_secret: bytes) -> None:
        self.read = Direction(suite, read_secret)
        self.write = Direction(suite, write_secret)
        self._buf = b""

    def seal(self, data: bytes, content_type: int = CT_APPLICATION_DATA) -> bytes:
        """`data` as protected records of at most 16 KB of plaintext each."""
        out = []
        for i in range(0, max(len(data), 1), MAX_PLAINTEXT):
            inner = data[i : i + MAX_PLAINTEXT] + bytes([content_type])
            header = bytes([CT_APPLICATION_DATA, 3, 3]) + (len(inner) + TAG).to_bytes(2, "big")
            w = self.write
            out.append(header + w.aead().encrypt(w.nonce(), inner, header))
        return b"".join(out)

    def alert(self, description: int) -> bytes:
        """A protected alert record: close_notify is a warning, anything else fatal."""
        return self.seal(bytes([1 if description == CLOSE_NOTIFY else 2, description]), CT_ALERT)

    def open(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed received bytes; returns (application data, bytes to send back -- a KeyUpdate answer).
        Raises TLSAlert when the connection must end."""
        buf = self._buf + data if self._buf else data
        plain: list[bytes] = []
        reply = b""
        pos = 0
        while len(buf) - pos >= HEADER:
            outer = buf[pos]
            length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if outer != CT_APPLICATION_DATA:
                raise TLSAlert(f"unprotected record of type {outer} after the handshake", UNEXPECTED_MESSAGE)
            if length > MAX_CIPHERTEXT:
                raise TLSAlert("record too long", RECORD_OVERFLOW)
            if len(buf) - pos < HEADER + length:
                break
            header = buf[pos : pos + HEADER]
            body = buf[pos + HEADER : pos + HEADER + length]
            pos += HEADER + length
            try:
                inner = self.read.aead().decrypt(self.read.nonce(), body, header)
            except Exception as e:  # InvalidTag, or a body shorter than the tag
                raise TLSAlert("record failed authentication", BAD_RECORD_MAC) from e
            if len(inner) > MAX_PLAINTEXT + 1:
                # the limit holds for the content, its type and the padding together
                raise TLSAlert("inner plaintext too long", RECORD_OVERFLOW)
            end = len(inner.rstrip(b"\x00"))
            if end == 0:
                raise TLSAlert("record without a content type", UNEXPECTED_MESSAGE)
            ctype = inner[end - 1]
            content = inner[: end - 1]
            if ctype == CT_APPLICATION_DATA:
                plain.append(content)
            elif ctype == CT_ALERT:
                _alert(content, b"".join(plain))
            elif ctype == CT_HANDSHAKE:
                if not content:
                    raise TLSAlert("empty handshake record", UNEXPECTED_MESSAGE)  # RFC 8446 5.1
                reply += self._handshake(content)
            else:
                raise TLSAlert(f"record of content type {ctype}", UNEXPECTED_MESSAGE)
        self._buf = buf[pos:]
        return b"".join(plain), reply

    def _handshake(self, content: bytes) -> bytes:
        """Post-handshake messages: only KeyUpdate is accepted from a client."""
        reply = b""
        pos = 0
        while pos < len(content):
            if len(content) - pos < 4:
                raise TLSAlert("handshake message split across records", UNEXPECTED_MESSAGE)
            kind = content[pos]
            length = int.from_bytes(content[pos + 1 : pos + 4], "big")
            body = content[pos + 4 : pos + 4 + length]
            pos += 4 + length
            if len(body) != length:
                raise TLSAlert("handshake message split across records", UNEXPECTED_MESSAGE)
            if kind != HS_KEY_UPDATE:
                raise TLSAlert(f"post-handshake message {kind}", UNEXPECTED_MESSAGE)
            if length != 1 or body[0] not in (0, 1):
                raise TLSAlert("malformed KeyUpdate", DECODE_ERROR)
            if pos != len(content):
                # RFC 8446 5.1: a key change must be at a record boundary
                raise TLSAlert("data after KeyUpdate in its record", UNEXPECTED_MESSAGE)
            self.read.update()
            if body[0] == 1:  # update_requested: answer with our own (not requesting) and switch
                reply += self.seal(bytes([HS_KEY_UPDATE, 0, 0, 1, 0]), CT_HANDSHAKE)
                self.write.update()
        return reply

    def pending(self) -> int:
        """Bytes of an incomplete record held."""
        return len(self._buf)


def _alert(content: bytes, plain: bytes) -> None:
    """The peer's alert ends the connection; after a close_notify, what it sent before still counts."""
    if len(content) != 2:
        raise TLSAlert("malformed alert", DECODE_ERROR)
    if content[1] == CLOSE_NOTIFY:
        raise PeerClosed(plain)
    raise TLSAlert(f"peer sent alert {content[1]}", None)
