"""cvlan-front's connections from nodes: the TLS handshake in OpenSSL, then the record layer in
tls13, and the node's HTTP/1.1 requests forwarded to the controller with the verified client
certificate in X-Client-Cert (URL-escaped PEM, what the controller believes from its proxy socket).

A connection holds, between polls, its two traffic keys, the node's certificate (DER) and a few
numbers: the point of the front is that 100,000 idle node connections fit in about 0.3 GB."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto

from cvlan.front import tls13
from cvlan.front.backend import BackendPool
from cvlan.front.metrics import FrontMetrics, HandshakeFailure, Refusal
from cvlan.front.park import Parking, parked_answer
from cvlan.wire import nodeproto as wire
from cvlan.wire.httphead import MAX_HEAD, HeadError, RequestHead, head_end, parse_request_head

log = logging.getLogger(__name__)

MAX_BODY = wire.MAX_REQUEST_BYTES
"""A request is buffered whole before it is forwarded: no larger than the node API takes."""
MAX_HANDSHAKE_RECORD = 2**14 + 256
WRITE_HIGH_WATER = 64 * 1024
"""Answers not yet taken by the client above this: the connection reads nothing more (and forwards
no further pipelined request) until they drain below a quarter of it."""
SWEEP_EVERY = 5.0
STRIPPED = (b"x-client-cert", b"x-cvlan-park", b"connection", b"keep-alive", b"proxy-connection")
POLL_PATH = b"/v1/poll"
REFORWARD_HEAD = (
    b"POST /v1/poll HTTP/1.1\r\nHost: cvlan-front\r\nContent-Type: " + wire.CT_PROTO.encode() + b"\r\n"
    b"Content-Length: %d\r\n"
)
"""A parked poll forwarded again: its body, the node's certificate and X-Cvlan-Park follow."""
NODE_PATHS = frozenset((b"/v1/discover", b"/v1/register", b"/v1/poll", b"/v1/renew", b"/v1/report"))
"""The node API (NODE-PROTOCOL.md, "Calls"): the only paths forwarded; anything else is 404 here."""
QUICK = frozenset((b"/v1/discover", b"/v1/poll"))
"""Requests the controller answers from memory; any other may wait on its database and is slow
(backend.Pending.slow: it holds at most half of a controller's connections)."""
RETRY_SAFE = frozenset((b"/v1/discover", b"/v1/register", b"/v1/poll", b"/v1/renew"))
"""Requests sent again to another controller when the connection carrying them is lost before the
answer (docs/FRONT.md, "Several controllers"): discovery reads; a poll records what it reports, the
same again; a registration retried with its token and key is recognised as the same one
(ops.registration, "lost answer") and uses the token once; a renewal issues another certificate for
the same node. Not a report: its denied flows would be stored twice."""


@dataclass(frozen=True)
class Limits:
    """What one worker holds at most, and for how long (the command line's flags)."""

    max_conns: int = 20_000
    idle_timeout: float = 300.0
    """An idle connection with a verified client certificate is closed after this."""
    request_timeout: float = 30.0
    """From a request's first byte to its last (a client that trickles one is refused with 408)."""
    handshake_timeout: float = 10.0
    """From accept to the end of the handshake, however the client paces its bytes."""
    max_uncertified: int = 1_000
    """Connections in the handshake or without a client certificate; the oldest gives way to a new
    one beyond this, so they never take more than this many of the max_conns slots."""
    max_uncertified_per_addr: int = 64
    """Of those, from one IPv4 address or IPv6 /64; a new one beyond this is closed at accept."""
    uncertified_timeout: float = 10.0
    """An idle connection without a client certificate (discovery, registration) is closed after this."""

    def sweep_every(self) -> float:
        """The sweeper's period: fine enough for the shortest timeout."""
        timeouts = (self.idle_timeout, self.request_timeout, self.handshake_timeout, self.uncertified_timeout)
        return min(SWEEP_EVERY, min(timeouts) / 2)


def source_of(peer: object) -> str:
    """The source a per-address limit counts by: the IPv4 address, or the IPv6 /64 (one host's
    share of a network; a host has a whole /64 to pick addresses from)."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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


def plain_response(status: int, message: str) -> bytes:
    body = (message + "\n").encode()
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class Front:
    """One process's listener: its TLS context, its connections and its pool to the controller."""

    def __init__(
        self, ctx: SSL.Context, pool: BackendPool, limits: Limits | None = None, park: bool = True
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.park = park
        self.parking: Parking | None = None
        """Long-polls held here (park.py), from start() on if `park`; None: the controller holds them."""
        self.limits = limits or Limits()
        self.conns: set[FrontConn] = set()
        self.uncertified: dict[FrontConn, None] = {}
        """Connections in the handshake or without a client certificate, oldest first."""
        self.per_source: dict[str, int] = {}
        """How many of those each source (source_of) holds."""
        self.refused = 0
        """Connections refused at accept since the last sweep (told in the log then)."""
        self.pushed_out = 0
        """Uncertified connections closed to make room for new ones since the last sweep."""
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics = FrontMetrics()
        self.metrics.watch(
            lambda: len(self.conns),
            lambda: len(self.uncertified),
            lambda: len(self.pool.waiting),
            lambda: self.pool.open_conns(),
        )
        if isinstance(pool, BackendPool):  # (unit tests of the limits run without one)
            pool.on_retry = self.metrics.backend_retries.inc

    def __call__(self) -> FrontConn:
        return FrontConn(self)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        if self.park:
            self.parking = Parking(self.pool.paths, health=self.pool.stream_state)
            self.parking.start()

    def admit(self, conn: FrontConn, source: str) -> bool:
        """A new connection, not yet certified: False if it must be refused. At the budget for
        uncertified connections, or at max_conns, the oldest uncertified one is closed to make room;
        only verified connections are never pushed out."""
        lim = self.limits
        if self.per_source.get(source, 0) >= lim.max_uncertified_per_addr:
            self.refused += 1
            self.metrics.refused[Refusal.PER_ADDRESS].inc()
            return False
        if len(self.uncertified) >= lim.max_uncertified or len(self.conns) >= lim.max_conns:
            if not self.uncertified:
                self.refused += 1
                self.metrics.refused[Refusal.FULL].inc()
                return False
            next(iter(self.uncertified)).close()
            self.pushed_out += 1
            self.metrics.refused[Refusal.PUSHED_OUT].inc()
        self.metrics.accepted.inc()
        self.conns.add(conn)
        self.uncertified[conn] = None
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return True

    def release(self, conn: FrontConn, source: str) -> None:
        """`conn` no longer counts as uncertified (it has a verified certificate, or it closed)."""
        if conn in self.uncertified:
            del self.uncertified[conn]
            left = self.per_source[source] - 1
            if left:
                self.per_source[source] = left
            else:
                del self.per_source[source]

    async def _sweep(self) -> None:
        """One timer for all connections: close those idle too long or past a deadline."""
        while True:
            await asyncio.sleep(self.limits.sweep_every())
            now = time.monotonic()
            self.pool.sweep(now)
            for c in list(self.conns):
                c.check(now, self.limits)
            if self.refused or self.pushed_out:
                log.warning(
                    "connection limits reached: %d refused at accept, %d uncertified pushed out (%d open)",
                    self.refused,
                    self.pushed_out,
                    len(self.conns),
                )
                self.refused = self.pushed_out = 0

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.parking is not None:
            self.parking.stop()
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
        "source",
        "paused",
        "ending",
        "poll_body",
        "poll_gen",
        "park_cid",
        "park_backend",
        "park_until",
        "park_answer",
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
        self.since = self.last
        """In the handshake: when the connection was accepted. Then: when the first byte of the
        request in `plain` came (0: none is incomplete)."""
        self.keep = True
        """The request being answered lets the connection stay open."""
        self.source = ""
        """Where it comes from (source_of) while it counts as uncertified; empty after."""
        self.paused = False
        """The client is not taking its answers: above WRITE_HIGH_WATER unsent."""
        self.ending = False
        """The client sent close_notify: answer what it sent before, then close."""
        self.poll_body = b""
        """The body of the poll being answered, forwarded for parking (empty: another request)."""
        self.poll_gen = 0
        """The event stream's generation (Parking.gen) when that poll was last forwarded."""
        self.park_cid = -1
        """The CVLAN whose wake the parked poll waits for (-1: not parked)."""
        self.park_backend = 0
        """The controller whose answer parked it (whose event stream wakes it)."""
        self.park_until = 0.0
        self.park_answer = b""
        """The parked poll's answer when its wait is over ("unchanged", from the controller)."""

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        source = source_of(t.get_extra_info("peername"))
        if not self.front.admit(self, source):
            t.close()
            self.state = STATE_CLOSED
            return
        self.source = source
        t.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        tls = SSL.Connection(self.front.ctx, None)
        tls.set_accept_state()
        tls.set_app_data(self)
        self.tls = tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = STATE_CLOSED
        self._release()
        self._unpark()
        self.front.conns.discard(self)
        if self.tls is not None:
            self.tls.set_app_data(None)
        self.tls = None
        self.records = None
        self.transport = None  # no cycle with the transport: freed by reference counting

    def _release(self) -> None:
        if self.source:
            self.front.release(self, self.source)
            self.source = ""

    def close(self, alert: int | None = None) -> None:
        if self.state == STATE_CLOSED:
            return
        self.state = STATE_CLOSED
        self.last = time.monotonic()  # from now on: when it was closed
        self._release()
        self._unpark()
        t = self.transport
        if t is not None and not t.is_closing():
            if alert is not None and self.records is not None:
                try:
                    t.write(self.records.alert(alert))
                except tls13.TLSAlert:
                    pass
            t.close()

    def check(self, now: float, lim: Limits) -> None:
        """The sweeper's look at this connection: end it if it is past a deadline."""
        if self.state == STATE_HANDSHAKE:
            if now - self.since > lim.handshake_timeout:  # counted from accept, not the last byte
                self._handshake_failed("handshake not done in time", HandshakeFailure.TIMEOUT)
        elif self.state == STATE_CLOSED:
            # closed, but the answers and the alert are still unsent: a client that reads nothing
            if self.transport is not None and now - self.last > lim.request_timeout:
                self.transport.abort()
        elif self.state == STATE_IDLE:
            if self.since and now - self.since > lim.request_timeout:
                self._refuse(408, "the request did not arrive in time")
            elif now - self.last > (lim.idle_timeout if self.cert else lim.uncertified_timeout):
                self.close(tls13.CLOSE_NOTIFY)

    def data_received(self, data: bytes) -> None:
        if self.state == STATE_HANDSHAKE:
            self._handshake(data)
        elif self.state != STATE_CLOSED and not self.ending:
            self._records(data)

    def pause_writing(self) -> None:
        """The client does not take its answers: read nothing more from it until it does."""
        self.paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.state == STATE_CLOSED or self.transport is None:
            return
        if not self.ending:
            self.transport.resume_reading()
        if self.state == STATE_IDLE:
            self._next_request()

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
                self._handshake_failed("handshake record too long", HandshakeFailure.RECORD_TOO_LONG)
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
                self._handshake_failed(_ssl_reason(e), HandshakeFailure.TLS_ERROR)
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

    def _handshake_failed(self, reason: str, kind: HandshakeFailure) -> None:
        self.front.metrics.handshake_failures[kind].inc()
        log.info("TLS handshake failed", extra={"reason": reason})
        self.close()

    def _established(self) -> None:
        """The handshake is done: take the traffic secrets and the node's certificate, free OpenSSL's
        connection, and go on with the record layer."""
        tls = self.tls
        assert tls is not None
        # What OpenSSL wrote after the client's Finished are session tickets (pyOpenSSL cannot set
        # num_tickets to 0, and SSL_OP_NO_TICKET only makes them stateful). The front resumes no
        # session: they are dropped unsent, so our first record is number 0 of the server's
        # application traffic key, as the client expects.
        _drain(tls)
        suite = tls13.SUITES.get(tls.get_cipher_name() or "")
        secrets = self.secrets or {}
        client = secrets.get(b"CLIENT_TRAFFIC_SECRET_0")
        server = secrets.get(b"SERVER_TRAFFIC_SECRET_0")
        if tls.get_protocol_version_name() != "TLSv1.3" or suite is None or not client or not server:
            self._handshake_failed(
                f"unsupported session {tls.get_protocol_version_name()} {suite}", HandshakeFailure.UNSUPPORTED
            )
            return
        peer = tls.get_peer_certificate()
        self.cert = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer) if peer is not None else b""
        self.records = tls13.RecordLayer(suite, client, server)
        tls.set_app_data(None)
        self.tls = None
        self.secrets = None
        self.state = STATE_IDLE
        self.since = 0.0
        self.last = time.monotonic()
        self.front.metrics.handshakes.inc()
        if self.cert:
            self._release()
        rest, self.raw = self.raw, b""
        if rest:
            self._records(rest)

    # --- records and requests -------------------------------------------------------------------

    def _records(self, data: bytes) -> None:
        assert self.records is not None and self.transport is not None
        seq = self.records.read.seq
        try:
            plain, reply = self.records.open(data)
        except tls13.PeerClosed as e:
            # The client is done sending (TLS 1.3 close_notify closes one direction): answer what
            # it sent before, then close.
            plain, reply = e.plain, b""
            self.ending = True
            self.transport.pause_reading()
        except tls13.TLSAlert as e:
            if e.alert is not None:
                log.info("TLS connection ended", extra={"reason": str(e)})
            self.close(e.alert)
            return
        # the records this call opened (a KeyUpdate restarts the sequence: those before it are missed)
        self.front.metrics.records_in.inc(max(0, self.records.read.seq - seq))
        if reply:
            self.transport.write(reply)
        if plain:  # only application bytes count as activity: empty records do not
            self.last = time.monotonic()
            if not self.plain:
                self.since = self.last
            self.plain += plain
            if self.state == STATE_IDLE and not self.paused:
                self._next_request()
            elif len(self.plain) > MAX_HEAD + MAX_BODY:
                self.close(tls13.CLOSE_NOTIFY)  # a client that floods while its request is answered
        elif self.ending and self.state == STATE_IDLE and not self.paused:
            self._next_request()  # nothing left to answer: closes

    def _next_request(self) -> None:
        """Forward the next complete request in `plain`, if there is one."""
        buf = self.plain
        try:
            end = head_end(buf)
            if end < 0:
                if self.ending:
                    self.close(tls13.CLOSE_NOTIFY)  # the client is done and sent no further request
                return
            h = check_head(buf[:end])
        except HeadError as e:
            self._refuse(e.status, e.message)
            return
        request_line, length = h.request_line, max(h.length, 0)
        keep = h.version == b"HTTP/1.1"
        kept = [request_line]
        for line, (lname, value) in zip(h.lines, h.fields, strict=True):
            if lname == b"connection":
                v = value.lower()
                keep = b"keep-alive" in v if not keep else b"close" not in v
            if lname not in STRIPPED:
                kept.append(line)
        total = end + 4 + length
        if len(buf) < total:
            if self.ending:
                self.close(tls13.CLOSE_NOTIFY)  # cut short by the client's close_notify
            return
        body = buf[end + 4 : total]
        self.plain = buf[total:]
        self.since = self.last if self.plain else 0.0
        if self.cert:
            kept.append(b"X-Client-Cert: " + escaped_pem(self.cert))
        parking = self.front.parking
        self.poll_body = b""
        if parking is not None and self.cert and h.method == b"POST" and h.target == POLL_PATH:
            kept.append(b"X-Cvlan-Park: 1")
            self.poll_body, self.poll_gen = body, parking.gen
        kept.append(b"\r\n")
        self.state = STATE_FORWARDING
        self.keep = keep
        head_only = h.method == b"HEAD"
        path = h.target.partition(b"?")[0]
        self.front.pool.submit(
            b"\r\n".join(kept) + body,
            head_only,
            self._answered,
            retry=path in RETRY_SAFE,
            slow=path not in QUICK,
        )

    def _answered(self, response: bytes | None, keep: bool, backend: int = -1) -> None:
        if self.state == STATE_CLOSED or self.records is None or self.transport is None:
            return
        if self.poll_body and response is not None and backend >= 0 and self._park(response, backend):
            return
        self.poll_body = self.park_answer = b""
        if response is None:
            self.front.metrics.bad_gateway.inc()
            response = plain_response(502, "the controller did not answer")
            keep = False
        else:
            self.front.metrics.forwarded.inc()
        try:
            self.transport.write(self.records.seal(response))
            self.front.metrics.sealed(len(response))
        except tls13.TLSAlert:
            self.close()
            return
        self.last = time.monotonic()
        if not (keep and self.keep):
            self.close(tls13.CLOSE_NOTIFY)
            return
        self.state = STATE_IDLE
        if not self.paused and (self.plain or self.ending):
            self._next_request()

    # --- parked long-polls (park.py) ------------------------------------------------------------

    def _park(self, response: bytes, backend: int) -> bool:
        """Hold the poll here if controller `backend` said it may wait; True if it is held (or
        forwarded again)."""
        parking = self.front.parking
        got = parked_answer(response)
        if got is None or parking is None:
            return False
        self.park_answer, cid, wakes, wait = got
        if not parking.park(self, cid, wakes, wait, backend):
            self.reforward()
        return True

    def reforward(self) -> None:
        """Forward the parked poll again: the CVLAN changed, or the event stream was (re)established."""
        parking = self.front.parking
        if self.state != STATE_FORWARDING or parking is None:
            return
        body = self.poll_body
        head = REFORWARD_HEAD % len(body)
        cert = b"X-Client-Cert: " + escaped_pem(self.cert) + b"\r\n"
        self.poll_gen = parking.gen
        request = head + cert + b"X-Cvlan-Park: 1\r\n\r\n" + body
        self.front.pool.submit(request, False, self._answered, later=True, retry=True)

    def park_expired(self) -> None:
        """The parked poll's wait is over: answer it "unchanged" as the controller would have."""
        answer = self.park_answer
        self.poll_body = b""
        self._answered(answer, True)

    def _unpark(self) -> None:
        if self.park_cid >= 0 and self.front.parking is not None:
            self.front.parking.unpark(self)

    def _refuse(self, status: int, message: str) -> None:
        assert self.records is not None and self.transport is not None
        self.front.metrics.refused_requests.inc()
        answer = plain_response(status, message)
        self.transport.write(self.records.seal(answer))
        self.front.metrics.sealed(len(answer))
        self.close(tls13.CLOSE_NOTIFY)


def check_head(raw: bytes) -> RequestHead:
    """The head of a request the front forwards (httphead's rules, the controller's lean server
    reads it alike), or HeadError with what to answer: a path outside the node API, a body without
    a Content-Length or too large, an Expect."""
    h = parse_request_head(raw)
    if h.target.partition(b"?")[0] not in NODE_PATHS:
        raise HeadError(404, "not a node API path: cvlan-front forwards only the node API")
    if h.get(b"transfer-encoding") is not None:
        raise HeadError(411, "send the request body with a Content-Length")
    if h.get(b"expect") is not None:
        raise HeadError(417, "Expect is not supported")
    if h.length > MAX_BODY:
        raise HeadError(413, "request body too large")
    return h


def _drain(tls: SSL.Connection) -> None:
    """Read and drop what OpenSSL has written."""
    while True:
        try:
            tls.bio_read(65536)
        except SSL.WantReadError:
            return


def _ssl_reason(e: SSL.Error) -> str:
    try:
        return "; ".join(str(x[2]) for x in e.args[0]) or "handshake failed"
    except (IndexError, TypeError):
        return str(e) or "handshake failed"
