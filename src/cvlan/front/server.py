"""cvlan-front's connections from nodes: the TLS handshake in OpenSSL, then the record layer in
tls13, and the node's HTTP/1.1 requests forwarded to the controller with the verified client
certificate in X-Client-Cert (URL-escaped PEM, what the controller believes from its proxy socket).

A connection holds, between polls, its two traffic keys, the node's certificate (DER) and a few
numbers: the point of the front is that 100,000 idle node connections fit in about 0.3 GB."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto

from cvlan.front import tls13
from cvlan.front.backend import BackendPool
from cvlan.wire import nodeproto as wire

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = wire.MAX_REQUEST_BYTES
"""A request is buffered whole before it is forwarded: no larger than the node API takes."""
HANDSHAKE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
"""Default time from a request's first byte to its last (a client that trickles one is refused)."""
MAX_HANDSHAKE_RECORD = 2**14 + 256
SWEEP_EVERY = 5.0
STRIPPED = (b"x-client-cert", b"connection", b"keep-alive", b"proxy-connection")

STATE_HANDSHAKE, STATE_IDLE, STATE_FORWARDING, STATE_CLOSED = range(4)


def tls_context(cert: Path, key: Path, ca: Path) -> SSL.Context:
    """TLS 1.3 only; a client certificate is asked for and, when one is sent, verified against the
    controller's CA (registration comes without one); no renegotiation, no early data."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.check_privatekey()
    ctx.load_verify_locations(str(ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_alpn_select_callback(_alpn)
    ctx.set_keylog_callback(_keylog)
    return ctx


def _alpn(conn: SSL.Connection, offered: list[bytes]) -> Any:
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _keylog(conn: SSL.Connection, line: bytes) -> None:
    """OpenSSL tells each secret of the key schedule as it is made; keep the two traffic secrets."""
    fc = conn.get_app_data()
    if fc is None or fc.secrets is None:
        return
    label, _, rest = line.partition(b" ")
    if label in (b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0"):
        fc.secrets[label] = bytes.fromhex(rest.partition(b" ")[2].decode())


def escaped_pem(der: bytes) -> bytes:
    """The certificate as URL-escaped PEM, the X-Client-Cert format of nginx and HAProxy configs."""
    b64 = base64.encodebytes(der).replace(b"\n", b"%0A")
    return b"-----BEGIN%20CERTIFICATE-----%0A" + b64 + b"-----END%20CERTIFICATE-----%0A"


def plain_response(status: int, reason: str, message: str) -> bytes:
    body = (message + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class Front:
    """One process's listener: its TLS context, its connections and its pool to the controller."""

    def __init__(
        self,
        ctx: SSL.Context,
        pool: BackendPool,
        idle_timeout: float = 300.0,
        max_conns: int = 20_000,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_conns = max_conns
        self.conns: set[FrontConn] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> FrontConn:
        return FrontConn(self)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """One timer for all connections: close those idle too long or stuck in the handshake."""
        every = min(SWEEP_EVERY, self.idle_timeout / 2, self.request_timeout / 2)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            self.pool.sweep(now)
            for c in list(self.conns):
                if c.state == STATE_HANDSHAKE and now - c.last > HANDSHAKE_TIMEOUT:
                    c.close()
                elif c.state == STATE_IDLE and c.since and now - c.since > self.request_timeout:
                    c._refuse(408, "Request Timeout", "the request did not arrive in time")
                elif c.state == STATE_IDLE and now - c.last > self.idle_timeout:
                    c.close(tls13.CLOSE_NOTIFY)

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.conns):
            c.close(tls13.CLOSE_NOTIFY)
        self.pool.close()


class FrontConn(asyncio.Protocol):
    """One node's connection."""

    __slots__ = (
        "front",
        "transport",
        "state",
        "last",
        "tls",
        "secrets",
        "raw",
        "records",
        "cert",
        "plain",
        "since",
        "keep",
    )

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.state = STATE_HANDSHAKE
        self.last = time.monotonic()
        self.tls: SSL.Connection | None = None
        self.secrets: dict[bytes, bytes] | None = {}
        """The traffic secrets while OpenSSL's keylog hands them over; None once established."""
        self.raw = b""
        """Handshake phase: received bytes not yet fed to OpenSSL."""
        self.records: tls13.RecordLayer | None = None
        self.cert = b""
        """The node's verified certificate (DER); empty if it sent none."""
        self.plain = b""
        """Decrypted bytes of requests not yet forwarded."""
        self.since = 0.0
        """When the first byte of the request in `plain` came (0: none is incomplete)."""
        self.keep = True
        """The request being answered lets the connection stay open."""

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.front.conns) >= self.front.max_conns:
            transport.close()
            self.state = STATE_CLOSED
            return
        self.front.conns.add(self)
        tls = SSL.Connection(self.front.ctx, None)
        tls.set_accept_state()
        tls.set_app_data(self)
        self.tls = tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = STATE_CLOSED
        self.front.conns.discard(self)
        if self.tls is not None:
            self.tls.set_app_data(None)
        self.tls = None
        self.records = None
        self.transport = None  # no cycle with the transport: freed by reference counting

    def close(self, alert: int | None = None) -> None:
        if self.state == STATE_CLOSED:
            return
        self.state = STATE_CLOSED
        t = self.transport
        if t is not None and not t.is_closing():
            if alert is not None and self.records is not None:
                try:
                    t.write(self.records.alert(alert))
                except tls13.TLSAlert:
                    pass
            t.close()

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.state == STATE_HANDSHAKE:
            self._handshake(data)
        elif self.state != STATE_CLOSED:
            self._records(data)

    # --- handshake ------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        """Feed OpenSSL one whole record at a time, so that it never reads past the client's Finished:
        the bytes after it are the first protected records, and they are ours."""
        tls = self.tls
        assert tls is not None and self.transport is not None
        self.raw += data
        while self.state == STATE_HANDSHAKE and len(self.raw) >= tls13.HEADER:
            length = int.from_bytes(self.raw[3:5], "big")
            if length > MAX_HANDSHAKE_RECORD:
                self._handshake_failed("handshake record too long")
                return
            if len(self.raw) < tls13.HEADER + length:
                break
            record, self.raw = self.raw[: tls13.HEADER + length], self.raw[tls13.HEADER + length :]
            self._flush_tls()  # what OpenSSL wrote before this record belongs to the handshake
            tls.bio_write(record)
            try:
                tls.do_handshake()
            except SSL.WantReadError:
                self._flush_tls()
                continue
            except SSL.Error as e:
                self._flush_tls()  # OpenSSL's alert
                self._handshake_failed(_ssl_reason(e))
                return
            self._established()

    def _flush_tls(self) -> bytes:
        assert self.tls is not None and self.transport is not None
        out = b""
        while True:
            try:
                out += self.tls.bio_read(65536)
            except SSL.WantReadError:
                break
        if out:
            self.transport.write(out)
        return out

    def _handshake_failed(self, reason: str) -> None:
        log.info("TLS handshake failed", extra={"reason": reason})
        self.close()

    def _established(self) -> None:
        """The handshake is done: take the traffic secrets and the node's certificate, free OpenSSL's
        connection, and go on with the record layer."""
        tls = self.tls
        assert tls is not None
        # What OpenSSL wrote while finishing are session tickets, protected with the server's first
        # traffic key: they are the first records of our sequence.
        tickets = self._flush_tls()
        sent = _count_records(tickets)
        suite = tls13.SUITES.get(tls.get_cipher_name() or "")
        secrets = self.secrets or {}
        client = secrets.get(b"CLIENT_TRAFFIC_SECRET_0")
        server = secrets.get(b"SERVER_TRAFFIC_SECRET_0")
        if tls.get_protocol_version_name() != "TLSv1.3" or suite is None or not client or not server:
            self._handshake_failed(f"unsupported session {tls.get_protocol_version_name()} {suite}")
            return
        peer = tls.get_peer_certificate()
        self.cert = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer) if peer is not None else b""
        self.records = tls13.RecordLayer(suite, client, server, write_seq=sent)
        tls.set_app_data(None)
        self.tls = None
        self.secrets = None
        self.state = STATE_IDLE
        rest, self.raw = self.raw, b""
        if rest:
            self._records(rest)

    # --- records and requests -------------------------------------------------------------------

    def _records(self, data: bytes) -> None:
        assert self.records is not None and self.transport is not None
        try:
            plain, reply = self.records.open(data)
        except tls13.TLSAlert as e:
            if e.alert not in (None, tls13.CLOSE_NOTIFY):
                log.info("TLS connection ended", extra={"reason": str(e)})
            self.close(e.alert)
            return
        if reply:
            self.transport.write(reply)
        if plain:
            if not self.plain:
                self.since = self.last
            self.plain += plain
            if self.state == STATE_IDLE:
                self._next_request()
            elif len(self.plain) > MAX_HEAD + MAX_BODY:
                self.close(tls13.CLOSE_NOTIFY)  # a client that floods while its request is answered

    def _next_request(self) -> None:
        """Forward the next complete request in `plain`, if there is one."""
        buf = self.plain
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._refuse(431, "Request Header Fields Too Large", "request head too large")
            return
        head = buf[:end]
        bare = head.replace(b"\r\n", b"")
        if b"\n" in bare or b"\r" in bare or b"\0" in head:
            # A bare CR or LF could end a line for the controller's parser and not for ours: a header
            # it would read (a forged X-Client-Cert, a second Content-Length) that was not stripped.
            self._refuse(400, "Bad Request", "bare CR or LF in the request head")
            return
        lines = head.split(b"\r\n")
        request_line = lines[0]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse(400, "Bad Request", "malformed request line")
            return
        keep = parts[2] == b"HTTP/1.1"
        length = 0
        seen_length = False
        kept = [request_line]
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name or b"\t" in name:
                # no folded lines, no space before the colon: one reading of a header, ours
                self._refuse(400, "Bad Request", "malformed header line")
                return
            lname = name.lower()
            if lname == b"content-length":
                v = value.strip()
                if not v.isdigit() or seen_length:
                    self._refuse(400, "Bad Request", "malformed or repeated Content-Length")
                    return
                seen_length = True
                length = int(v)
            elif lname == b"transfer-encoding":
                self._refuse(411, "Length Required", "send the request body with a Content-Length")
                return
            elif lname == b"expect":
                self._refuse(417, "Expectation Failed", "Expect is not supported")
                return
            elif lname == b"connection":
                v = value.strip().lower()
                keep = b"keep-alive" in v if not keep else b"close" not in v
            if lname not in STRIPPED:
                kept.append(line)
        if length > MAX_BODY:
            self._refuse(413, "Payload Too Large", "request body too large")
            return
        total = end + 4 + length
        if len(buf) < total:
            return
        body = buf[end + 4 : total]
        self.plain = buf[total:]
        self.since = self.last if self.plain else 0.0
        if self.cert:
            kept.append(b"X-Client-Cert: " + escaped_pem(self.cert))
        kept.append(b"\r\n")
        self.state = STATE_FORWARDING
        self.keep = keep
        head_only = parts[0] == b"HEAD"
        self.front.pool.submit(b"\r\n".join(kept) + body, head_only, self._answered)

    def _answered(self, response: bytes | None, keep: bool) -> None:
        if self.state == STATE_CLOSED or self.records is None or self.transport is None:
            return
        if response is None:
            response = plain_response(502, "Bad Gateway", "the controller did not answer")
            keep = False
        try:
            self.transport.write(self.records.seal(response))
        except tls13.TLSAlert:
            self.close()
            return
        self.last = time.monotonic()
        if not (keep and self.keep):
            self.close(tls13.CLOSE_NOTIFY)
            return
        self.state = STATE_IDLE
        if self.plain:
            self._next_request()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        assert self.records is not None and self.transport is not None
        self.transport.write(self.records.seal(plain_response(status, reason, message)))
        self.close(tls13.CLOSE_NOTIFY)


def _count_records(data: bytes) -> int:
    n = pos = 0
    while pos + tls13.HEADER <= len(data):
        pos += tls13.HEADER + int.from_bytes(data[pos + 3 : pos + 5], "big")
        n += 1
    return n


def _ssl_reason(e: SSL.Error) -> str:
    try:
        return "; ".join(str(x[2]) for x in e.args[0]) or "handshake failed"
    except (IndexError, TypeError):
        return str(e) or "handshake failed"
