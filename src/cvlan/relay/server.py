"""The relay: nodes keep a WebSocket over TLS here and exchange already-encrypted WireGuard packets.

A node authenticates with its controller-issued client certificate; its identity (node, tenant,
CVLAN, WireGuard key) comes from that certificate only. A frame is forwarded only to a node of the
same tenant and CVLAN. The relay never blocks on a slow receiver: each client has a bounded queue,
the oldest frame is dropped first, and every drop is counted by reason (STYLE C10).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from cryptography import x509

from cvlan.common.framequeue import FrameQueue
from cvlan.relay.metrics import RelayMetrics
from cvlan.relay.revocation import Verdict
from cvlan.wire import relayproto as rp
from cvlan.wire.certid import CertIdentityError, NodeIdentity, node_identity

log = logging.getLogger(__name__)

GONE_NOTICE_INTERVAL = 1.0
"""At most one PEER_GONE per (sender, destination) per this many seconds."""
MAX_MESSAGE = rp.FRAME_HEADER_LEN + rp.KEY_LEN + rp.MAX_PACKET


class DropReason(StrEnum):
    UNKNOWN_DEST = "unknown_dest"
    """The destination key has no connection here."""
    CROSS_CVLAN = "cross_cvlan"
    """The destination is in another tenant or CVLAN: refused."""
    QUEUE_HEAD = "queue_head"
    """The receiver's queue was full; its oldest frame was dropped for the new one."""
    GONE = "gone_disconnected"
    """Frames still queued for a client that disconnected."""
    DUP_CLIENT = "dup_client"
    """Frames still queued for a connection replaced by a newer one with the same key."""
    WRITE_ERROR = "write_error"
    BAD_FRAME = "bad_frame"
    """A frame from a client that does not parse, or one a client may not send."""


class RefuseReason(StrEnum):
    NO_CERT = "no_cert"
    TLS_HANDSHAKE = "tls_handshake"
    """TLS failed before HTTP: a certificate not signed by the CA, expired, or no TLS at all."""
    NOT_NODE = "not_node_cert"
    REVOKED = "revoked"
    CHECK_REFUSED = "check_refused"
    """The controller refused the relay's revocation check (fail closed)."""
    UNCHECKED = "unchecked"
    """The controller has been silent for longer than the fail-open window."""
    NOT_WEBSOCKET = "not_websocket"


Checker = Callable[[list[NodeIdentity], float, bool], Awaitable[tuple[list[Verdict], str]]]
"""(identities, now, fresh) -> (a verdict per identity, why the controller gave no answer or "")."""
REFUSALS = {
    Verdict.REVOKED: (RefuseReason.REVOKED, 403, "node certificate has been revoked"),
    Verdict.REFUSED: (RefuseReason.CHECK_REFUSED, 503, "the controller refused this relay's check"),
    Verdict.UNCHECKED: (RefuseReason.UNCHECKED, 503, "the controller has not confirmed this node lately"),
}


@dataclass(eq=False)
class Client:
    ident: NodeIdentity
    ws: web.WebSocketResponse
    queue: FrameQueue
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    gone_sent: dict[bytes, float] = field(default_factory=dict)
    closed: bool = False
    close_code: int = WSCloseCode.OK
    reader: asyncio.Task[None] | None = None

    @property
    def key(self) -> bytes:
        return self.ident.wg_key


class RelayServer:
    """Client table, forwarding and the HTTP application (WebSocket, /metrics, /healthz)."""

    def __init__(
        self,
        region: str,
        *,
        queue_len: int = 512,
        queue_bytes: int = 1 << 20,
        keepalive_s: int = 30,
        checker: Checker | None = None,
        revalidate_s: float = 60.0,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.region = region
        self.queue_len = queue_len
        self.queue_bytes = queue_bytes
        self.keepalive_s = keepalive_s
        self.checker = checker
        self.revalidate_s = revalidate_s
        self.metrics = metrics or RelayMetrics()
        self.clients: dict[bytes, Client] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- TLS ------------------------------------------------------------------------------------

    def ssl_context(self, cert_file: str, key_file: str, ca_pem: str) -> ssl.SSLContext:
        """Server TLS that asks for a client certificate signed by the controller CA.

        A client certificate that does not verify (other CA, expired) fails the handshake inside
        OpenSSL; the SSLObject subclass below is the one place Python sees that, so it counts it."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        ctx.load_verify_locations(cadata=ca_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        refused = self.metrics.refused

        class CountingSSLObject(ssl.SSLObject):
            def do_handshake(self) -> None:
                try:
                    super().do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    raise
                except ssl.SSLError:
                    # asyncio may call do_handshake again after the failure: count a connection once.
                    if not getattr(self, "_cvlan_counted", False):
                        self._cvlan_counted = True
                        refused.labels(RefuseReason.TLS_HANDSHAKE).inc()
                    raise

        ctx.sslobject_class = CountingSSLObject
        return ctx

    # --- HTTP -----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(rp.WS_PATH, self.handle_ws)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/healthz", self.handle_healthz)
        app.on_startup.append(self._start_background)
        app.on_shutdown.append(self._shutdown)
        return app

    async def handle_metrics(self, request: web.Request) -> web.Response:
        self.metrics.clients.set(len(self.clients))
        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "region": self.region, "clients": len(self.clients)})

    def _refuse(self, reason: RefuseReason, status: int, message: str) -> web.Response:
        self.metrics.refused.labels(reason).inc()
        return web.json_response({"error": {"code": reason.value, "message": message}}, status=status)

    async def authenticate(self, request: web.Request) -> NodeIdentity | web.Response:
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return self._refuse(RefuseReason.NO_CERT, 401, "a node client certificate is required")
        try:
            ident = node_identity(x509.load_der_x509_certificate(der))
        except CertIdentityError as e:
            return self._refuse(RefuseReason.NOT_NODE, 403, str(e))
        if self.checker is not None:
            verdicts, error = await self.checker([ident], time.monotonic(), False)
            if error:
                self.metrics.check_errors.inc()
            if verdicts[0] is not Verdict.VALID:
                return self._refuse(*REFUSALS[verdicts[0]])
        return ident

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        ident = await self.authenticate(request)
        if isinstance(ident, web.Response):
            return ident
        ws = web.WebSocketResponse(
            protocols=(rp.WS_PROTOCOL,),
            max_msg_size=MAX_MESSAGE,
            heartbeat=self.keepalive_s * 2,
            timeout=3.0,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            return self._refuse(RefuseReason.NOT_WEBSOCKET, 400, "expected a WebSocket upgrade")
        await ws.prepare(request)
        c = Client(ident, ws, FrameQueue(self.queue_len, self.queue_bytes))
        c.queue.push(rp.pack_frame(rp.ServerInfo(rp.PROTOCOL_VERSION, self.keepalive_s, self.region)))
        c.reader = asyncio.create_task(self._reader(c))
        writer = asyncio.create_task(self._writer(c))
        self._register(c)
        try:
            # The reader is cancelled to drop the client (replaced, revoked, shutdown); the
            # WebSocket is closed only here, by the task that owns it.
            await asyncio.wait([c.reader])
        finally:
            self._unregister(c, DropReason.GONE)
            for t in (c.reader, writer):
                t.cancel()
                with suppress(asyncio.CancelledError):
                    await t
            await ws.close(code=c.close_code)
        return ws

    # --- client table ---------------------------------------------------------------------------

    def _register(self, c: Client) -> None:
        old = self.clients.get(c.key)
        self.clients[c.key] = c
        self.metrics.clients.set(len(self.clients))
        self.metrics.connects.inc()
        if old is not None:
            # One connection per node key: the newer one wins (a node that reconnected before the
            # relay noticed the old TCP connection die).
            self.metrics.replaced.inc()
            old.close_code = rp.CLOSE_REPLACED
            self._close(old, DropReason.DUP_CLIENT)
        log.info(
            "client connected",
            extra={
                "node_id": c.ident.node_id,
                "tenant_id": c.ident.tenant_id,
                "cvlan": c.ident.cvlan_id,
                "peer": c.ident.short(),
            },
        )

    def _unregister(self, c: Client, reason: DropReason) -> None:
        if self.clients.get(c.key) is c:
            del self.clients[c.key]
            self.metrics.clients.set(len(self.clients))
            log.info(
                "client disconnected",
                extra={"node_id": c.ident.node_id, "cvlan": c.ident.cvlan_id, "peer": c.ident.short()},
            )
        self._close(c, reason)

    def _close(self, c: Client, reason: DropReason) -> None:
        if c.closed:
            return
        c.closed = True
        if c.queue:
            self.metrics.drops.labels(reason).inc(c.queue.clear())
        c.wake.set()
        if c.reader is not None:
            c.reader.cancel()

    # --- data path ------------------------------------------------------------------------------

    def enqueue(self, c: Client, frame: bytes) -> None:
        if c.closed:
            self.metrics.drops.labels(DropReason.GONE).inc()
            return
        dropped = c.queue.push(frame)
        if dropped:
            self.metrics.drop_queue_head.inc(dropped)
        c.wake.set()

    def forward(self, src: Client, dst_key: bytes, packet: bytes) -> None:
        dst = self.clients.get(dst_key)
        if dst is None or dst.closed:
            self.metrics.drop_unknown.inc()
            self._gone_notice(src, dst_key)
            return
        if dst.ident.cvlan_id != src.ident.cvlan_id or dst.ident.tenant_id != src.ident.tenant_id:
            # Answered exactly like an absent key, so a node learns nothing about other CVLANs.
            self.metrics.drop_cross.inc()
            self._gone_notice(src, dst_key)
            return
        self.metrics.frames_fwd.inc()
        self.metrics.bytes_fwd.inc(len(packet))
        self.enqueue(dst, rp.recv_packet(src.key, packet))

    def _gone_notice(self, src: Client, dst_key: bytes) -> None:
        now = time.monotonic()
        if src.gone_sent.get(dst_key, 0.0) + GONE_NOTICE_INTERVAL > now:
            return
        if len(src.gone_sent) > 1024:
            src.gone_sent.clear()
        src.gone_sent[dst_key] = now
        self.enqueue(src, rp.pack_frame(rp.PeerGone(dst_key, rp.PeerGoneReason.NOT_HERE)))

    async def _reader(self, c: Client) -> None:
        send_type = rp.FrameType.SEND_PACKET
        head = rp.FRAME_HEADER_LEN
        async for msg in c.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.TEXT:
                    self.metrics.drops.labels(DropReason.BAD_FRAME).inc()
                continue
            data: bytes = msg.data
            self.metrics.frames_in.inc()
            self.metrics.bytes_in.inc(len(data))
            # Hot path: a SEND_PACKET is forwarded without building frame objects.
            if len(data) >= head + rp.KEY_LEN and data[0] == send_type:
                if int.from_bytes(data[1:5], "big") != len(data) - head:
                    self.metrics.drops.labels(DropReason.BAD_FRAME).inc()
                    continue
                self.forward(c, data[head : head + rp.KEY_LEN], data[head + rp.KEY_LEN :])
                continue
            self._control(c, data)

    def _control(self, c: Client, data: bytes) -> None:
        try:
            frame = rp.parse_frame(data)
        except rp.FrameError:
            self.metrics.drops.labels(DropReason.BAD_FRAME).inc()
            return
        if isinstance(frame, rp.Ping):
            self.enqueue(c, rp.pack_frame(rp.Pong(frame.data)))
        elif not isinstance(frame, rp.Keepalive | rp.Pong):
            self.metrics.drops.labels(DropReason.BAD_FRAME).inc()

    async def _writer(self, c: Client) -> None:
        keepalive = rp.pack_frame(rp.Keepalive())
        try:
            while not c.closed:
                if not c.queue:
                    c.wake.clear()
                    timeout = self.keepalive_s * random.uniform(0.8, 1.0)
                    try:
                        await asyncio.wait_for(c.wake.wait(), timeout)
                    except TimeoutError:
                        c.queue.push(keepalive)
                    continue
                frame = c.queue.pop()
                await c.ws.send_bytes(frame)
                self.metrics.frames_out.inc()
                self.metrics.bytes_out.inc(len(frame))
        except (ConnectionError, RuntimeError):
            self.metrics.drops.labels(DropReason.WRITE_ERROR).inc()
            self._unregister(c, DropReason.GONE)

    # --- revocation -----------------------------------------------------------------------------

    async def revalidate_once(self) -> int:
        """Re-check every connected certificate with the controller; close those it no longer
        accepts (or, past the fail-open window, every one: see cvlan.relay.revocation)."""
        if self.checker is None or not self.clients:
            return 0
        clients = list(self.clients.values())
        verdicts, error = await self.checker([c.ident for c in clients], time.monotonic(), True)
        if error:
            self.metrics.check_errors.inc()
        closed = 0
        for c, verdict in zip(clients, verdicts, strict=True):
            if verdict is not Verdict.VALID and not c.closed:
                self.metrics.refused.labels(REFUSALS[verdict][0]).inc()
                log.info(
                    "closing client",
                    extra={"node_id": c.ident.node_id, "peer": c.ident.short(), "reason": verdict.value},
                )
                self._unregister(c, DropReason.GONE)
                closed += 1
        return closed

    async def _revalidate_loop(self) -> None:
        while True:
            await asyncio.sleep(self.revalidate_s * random.uniform(0.9, 1.1))
            try:
                await self.revalidate_once()
            except Exception:
                log.exception("revalidation failed")

    async def _start_background(self, app: web.Application) -> None:
        if self.checker is not None:
            t = asyncio.create_task(self._revalidate_loop())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        """Close every client connection (before the HTTP server waits for its handlers to end)."""
        for c in list(self.clients.values()):
            self._unregister(c, DropReason.GONE)

    async def _shutdown(self, app: web.Application) -> None:
        await self.close_all()
        for t in list(self._tasks):
            t.cancel()
