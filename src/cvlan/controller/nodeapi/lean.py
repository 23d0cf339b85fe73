"""A lean HTTP/1.1 server for the node API on the proxy socket.

Behind a TLS front every node's requests arrive over a few reused plain-HTTP connections. The full
web stack spends about half of the controller's time per poll on its own machinery: a task, request
and response objects, routing and middleware for each request. This protocol takes the node API's
requests as nodes send them -- protobuf bodies with a Content-Length, the front's X-Client-Cert --
and answers the common one, a poll, from the map cache, inline as the bytes arrive. Registration,
renewal, reports, discovery and a poll that must wait (a long-poll, a map not loaded yet) run as a
task, and the connection reads no further request until it is answered.

Every other request (another path or method, JSON, chunked bodies, Expect, HTTP/1.0, a head too
large...) is not parsed here: the connection, with the bytes already received, is handed to the
full web stack for the rest of its life. So the socket serves exactly what the web stack serves, and
this module only has to be right about the shapes it takes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from aiohttp import web
from google.protobuf.message import Message
from prometheus_client import Counter

from cvlan.controller.audit import request_id_var
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import REASONS, dumps, error_body, request_id, route_metrics
from cvlan.controller.mapper.cache import CvlanMap, Member
from cvlan.controller.nodeapi.handlers import NodeApi, encode
from cvlan.controller.nodeapi.identity import required
from cvlan.wire import nodeproto as wire
from cvlan.wire.certid import NodeIdentity
from cvlan.wire.httphead import MAX_HEAD, HeadError, head_end, parse_request_head
from cvlan.wire.pb import node_pb2 as pb

log = logging.getLogger(__name__)

MAX_BUFFERED = MAX_HEAD + wire.MAX_REQUEST_BYTES
CT_PROTO = wire.CT_PROTO.encode()

Answer = Message | bytes
FAST_REQUESTS = Counter(
    "cvlan_proxy_fast_requests_total",
    "Node API requests answered by the proxy socket's lean server",
    ["route"],
)
MALFORMED = Counter(
    "cvlan_proxy_malformed_heads_total",
    "Proxy-socket requests refused for a head that is not well-formed (400, or 431 when too large)",
)
HANDOVERS = Counter(
    "cvlan_proxy_handovers_total",
    "Proxy-socket connections handed to the web stack at a request the lean server does not take",
)


Answerer = Callable[[NodeApi, Any, Any], Coroutine[Any, Any, Answer]]
"""A route's NodeApi.answer_* method, unbound: called with the node API, the caller's identity (None
if it sent no certificate and the route does not require one) and the decoded request body."""


class Route:
    """A node API route the lean server takes, by its exact request line, and all that differs in
    answering it: the body's message, whether a client certificate is required, and the NodeApi method
    that answers -- the one the web stack's handler calls, so both give the same answers and errors."""

    __slots__ = ("path", "method", "request", "answer", "cert_required", "fast")

    def __init__(
        self,
        method: str,
        path: str,
        request: type[Message] | None,
        answer: Answerer | None,
        *,
        cert_required: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.request = request
        """The request body's message (None: no body, GET)."""
        self.answer = answer
        """Run as a task (None: discovery, answered inline). A poll is answered inline from the map
        cache when it need not wait; this answers it while its map is not loaded."""
        self.cert_required = cert_required
        """Refused (401) without the front's X-Client-Cert; registration takes one only to re-register."""
        self.fast = FAST_REQUESTS.labels(path)


ROUTES = {
    f"{r.method} {r.path} HTTP/1.1".encode(): r
    for r in (
        Route("POST", "/v1/poll", pb.PollRequest, NodeApi.answer_poll, cert_required=True),
        Route("POST", "/v1/register", pb.RegisterRequest, NodeApi.answer_register, cert_required=False),
        Route("POST", "/v1/renew", pb.RenewRequest, NodeApi.answer_renew, cert_required=True),
        Route("POST", "/v1/report", pb.ReportRequest, NodeApi.answer_report, cert_required=True),
        Route("GET", "/v1/discover", None, None, cert_required=False),
    )
}
POLL = ROUTES[b"POST /v1/poll HTTP/1.1"]


EVENTS = b"GET /v1/front/events HTTP/1.1"
"""A parking front's event stream (docs/FRONT.md, "Long-polls"): one per front worker, on this socket only."""
PARK = b"x-cvlan-park"
"""A poll from a front that parks long-polls itself: answered at once, never held here."""
PARKED = b"X-Cvlan-Parked: %d %d %d\r\n"
"""On the "unchanged" answer to such a poll that would have waited: the CVLAN id, its wake count and
the seconds to wait. The front holds the poll until the CVLAN is woken, or answers this after them."""
STREAM_BACKLOG = 4 * 1024 * 1024
"""Event lines a front has not read, above which its stream is closed (it then re-forwards what it parks)."""


class Head:
    """What a node API request's head says (only the headers this server reads)."""

    __slots__ = ("route", "length", "cert", "rid", "close", "park", "extra")

    def __init__(self, route: Route, length: int, cert: bytes, rid: str, close: bool, park: bool) -> None:
        self.route = route
        self.length = length
        self.cert = cert
        self.rid = rid
        self.close = close
        self.park = park
        self.extra = b""
        """Header lines added to the answer (PARKED)."""


def parse_head(raw: bytes) -> Head | None:
    """The head of a node API request as nodes send it; None for a well-formed request of another
    shape (the web stack's); HeadError for a head that is not well-formed (httphead: cvlan-front
    refuses it alike, so nothing it forwarded reads differently here)."""
    h = parse_request_head(raw)
    route = ROUTES.get(h.request_line)
    if route is None:
        return None
    cert, rid, close, park = b"", "", False, False
    for name, value in h.fields:
        if name == b"x-client-cert":
            cert = value
        elif name == b"content-type":
            if value.partition(b";")[0].strip().lower() != CT_PROTO:
                return None
        elif name == b"accept":
            if route.request is None and b"json" in value:
                return None  # discover answers JSON to who asks for it
        elif name == PARK:
            park = route is POLL
        elif name == b"x-request-id":
            rid = value.decode("latin-1")
        elif name == b"connection":
            token = value.lower()
            if token == b"close":
                close = True
            elif token != b"keep-alive":
                return None
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
    length = h.length
    if route.request is None:
        if length > 0:
            return None
        length = 0
    elif length < 0 or length > wire.MAX_REQUEST_BYTES:
        return None
    return Head(route, length, cert, rid, close, park)


def _poll(
    api: NodeApi, head: Head, ident: NodeIdentity, req: pb.PollRequest, m: CvlanMap, me: Member, now: Any
) -> Answer | Coroutine[Any, Any, Answer]:
    """The answer to a poll whose map is loaded, or the wait for it (a long-poll held here). A parking
    front's poll is never held: it gets the "unchanged" answer with PARKED, and the front holds it."""
    wait = api.record_poll(ident, req, m, me, now)
    if not wait:
        return api.poll_answer(ident, req, m)
    if head.park:
        head.extra = PARKED % (m.cvlan_id, api.mapper.wakes.get(m.cvlan_id, 0), int(wait))
        return api.poll_answer(ident, req, m)
    return api.wait_poll(ident, req, m, wait)


async def _load_poll(api: NodeApi, head: Head, ident: NodeIdentity, req: pb.PollRequest) -> Answer:
    """A poll whose map is not loaded yet: load it, then as _poll."""
    m, me = await api.mapper.map_for_node(ident.node_id, ident.tenant_id, ident.wg_key, ident.cvlan_id)
    got = _poll(api, head, ident, req, m, me, None)
    return await got if isinstance(got, Coroutine) else got


class LeanNodeServer:
    """The proxy socket's protocol factory: its connections, and the web stack to hand others to."""

    def __init__(self, api: NodeApi, web_stack: Callable[[], asyncio.Protocol]) -> None:
        self.api = api
        self.web_stack = web_stack
        self.conns: set[LeanNodeConn] = set()
        self.closing = False

    def __call__(self) -> LeanNodeConn:
        return LeanNodeConn(self)

    async def shutdown(self, _: web.Application | None = None, timeout: float = 10.0) -> None:
        """Close idle connections now; busy ones close after their answer (long-polls are woken by the
        node API's own shutdown hook). Waits up to `timeout` for them."""
        self.closing = True
        tasks = []
        for c in list(self.conns):
            if c.task is None:
                c.close()
            else:
                tasks.append(c.task)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


class LeanNodeConn(asyncio.Protocol):
    """One connection from the front."""

    __slots__ = ("server", "transport", "remote", "buf", "task", "paused", "stream")

    def __init__(self, server: LeanNodeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.stream = False
        """A front's event stream: what it sends is not read any more."""

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        # As the web stack names the peer: the address of an IP peer, "" for a Unix-socket peer.
        self.remote = (
            str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer) if peer is not None else None
        )
        self.server.conns.add(self)
        if self.server.closing:
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.stream:
            return
        self.buf += data
        if self.task is None:
            self._serve()
        elif len(self.buf) > MAX_BUFFERED and self.transport is not None and not self.paused:
            # Requests pipelined behind one that waits: read no more until it is answered.
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.server.api.mapper.wake_listeners.discard(self._event)
        self.transport = None
        if self.task is not None:
            self.task.cancel()

    # --- requests ------------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the complete requests in the buffer, one at a time, until one must wait."""
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        while self.buf and self.task is None and self.transport is not None:
            try:
                end = head_end(self.buf)
                if end < 0:
                    return
                raw = bytes(self.buf[:end])
                if raw.partition(b"\r\n")[0] == EVENTS:
                    self._stream()
                    return
                head = parse_head(raw)
            except HeadError as e:
                self._malformed(e)
                return
            if head is None:
                self._hand_over()
                return
            start = end + 4
            if len(self.buf) < start + head.length:
                return
            body = bytes(self.buf[start : start + head.length])
            del self.buf[: start + head.length]
            self._request(head, body)

    def _request(self, head: Head, body: bytes) -> None:
        t0 = time.perf_counter()
        api = self.server.api
        route = head.route
        cls, answer = route.request, route.answer
        waiting: Coroutine[Any, Any, Answer]
        try:
            if cls is None or answer is None:  # discovery: the caller's certificate does not matter
                self._answer(head, t0, api.answer_discover())
                return
            # One clock reading per request: the certificate's expiry and a poll's liveness share it.
            now = api.ctx.now()
            ident = api.identity.forwarded(head.cert, self.remote, now)
            if route is POLL:
                # The common request: answered inline from the map cache unless it must wait. (Its
                # route requires a certificate too, checked here where the identity itself is used.)
                ident = required(ident)
                req = api.decode(pb.PollRequest, body, wire.CT_PROTO)
                found = api.mapper.cached_for_node(
                    ident.node_id, ident.tenant_id, ident.wg_key, ident.cvlan_id
                )
                if found is None:  # the map is not loaded yet
                    waiting = _load_poll(api, head, ident, req)
                else:
                    got = _poll(api, head, ident, req, *found, now)
                    if not isinstance(got, Coroutine):
                        self._answer(head, t0, got)
                        return
                    waiting = got
            else:
                if route.cert_required:
                    ident = required(ident)  # before the body is decoded, as in the web stack's handlers
                waiting = answer(api, ident, api.decode(cls, body, wire.CT_PROTO))
        except DomainError as e:
            self._refuse(head, t0, e)
            return
        except Exception:  # noqa: BLE001 - one bad request must not take the connection's others down
            self._crash(head, t0)
            return
        # Audit records written on the way carry the request id, as through the web stack.
        head.rid = request_id(head.rid)
        token = request_id_var.set(head.rid)
        try:
            self.task = asyncio.get_running_loop().create_task(self._wait(head, t0, waiting))
        finally:
            request_id_var.reset(token)

    async def _wait(self, head: Head, t0: float, waiting: Coroutine[Any, Any, Answer]) -> None:
        try:
            answer = await waiting
        except DomainError as e:
            self._refuse(head, t0, e)
        except Exception:  # noqa: BLE001
            self._crash(head, t0)
        else:
            self._answer(head, t0, answer)
        self.task = None
        if self.server.closing:
            self.close()
        else:
            self._serve()

    # --- responses -----------------------------------------------------------------------------

    def _answer(self, head: Head, t0: float, answer: Answer) -> None:
        self._respond(head, t0, 200, CT_PROTO, encode(answer, wire.CT_PROTO, pb.PollResponse), head.extra)

    def _refuse(self, head: Head, t0: float, e: DomainError) -> None:
        extra = b"Retry-After: 2\r\n" if e.kind == Kind.UNAVAILABLE else b""
        self._error(head, t0, e.status, e.kind.value, e.message, e.details, extra)

    def _crash(self, head: Head, t0: float) -> None:
        head.rid = request_id(head.rid)
        log.exception("unhandled error", extra={"request_id": head.rid, "path": head.route.path})
        self._error(head, t0, 500, "internal", f"internal error (request id {head.rid})")

    def _error(
        self,
        head: Head,
        t0: float,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        extra: bytes = b"",
    ) -> None:
        body = dumps(error_body(code, message, details)).encode()
        self._respond(head, t0, status, b"application/json", body, extra)

    def _respond(
        self, head: Head, t0: float, status: int, ct: bytes, body: bytes, extra: bytes = b""
    ) -> None:
        if self.transport is None:
            return
        close = head.close or self.server.closing
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n%s%s\r\n%s"
            % (
                status,
                REASONS.get(status, b"Error"),
                ct,
                len(body),
                request_id(head.rid).encode(),
                extra,
                b"Connection: close\r\n" if close else b"",
                body,
            )
        )
        head.route.fast.inc()
        count, latency = route_metrics(head.route.path, head.route.method, status)
        count.inc()
        latency.observe(time.perf_counter() - t0)
        if close:
            self.close()

    def _malformed(self, e: HeadError) -> None:
        """Refuse a head that is not well-formed, as the front does, and close: what follows it on
        the connection cannot be told apart from its body."""
        MALFORMED.inc()
        if self.transport is not None:
            body = dumps(error_body("invalid", f"malformed request head: {e.message}")).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (e.status, REASONS.get(e.status, b"Error"), len(body), body)
            )
        self.close()

    # --- a front's event stream ----------------------------------------------------------------

    def _stream(self) -> None:
        """Become a parking front's event stream: after "ready", a line "<CVLAN id> <wake count>" at
        every wake of a CVLAN's long-polls (Mapper._wake: a change, new endpoints, the relay map),
        until either side closes it."""
        assert self.transport is not None
        self.stream = True
        self.buf = bytearray()
        self.server.api.mapper.wake_listeners.add(self._event)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nready\n"
        )
        log.info("a front subscribed to map changes")

    def _event(self, cid: int, wakes: int) -> None:
        t = self.transport
        if t is None:
            return
        t.write(b"%d %d\n" % (cid, wakes))
        if t.get_write_buffer_size() > STREAM_BACKLOG:
            # The front does not read its events: it learns of the loss and asks again for what it holds.
            log.warning("a front's event stream is not read; closing it")
            self.server.api.mapper.wake_listeners.discard(self._event)
            self.close()

    # --- connection ----------------------------------------------------------------------------

    def _hand_over(self) -> None:
        """Give this connection, and what it has sent so far, to the web stack for good."""
        transport = self.transport
        if transport is None:
            return
        self.server.conns.discard(self)
        HANDOVERS.inc()
        self.transport = None
        data, self.buf = bytes(self.buf), bytearray()
        proto = self.server.web_stack()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if data:
            proto.data_received(data)

    def close(self) -> None:
        """Close after what was written; no further request on this connection is read or answered."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
