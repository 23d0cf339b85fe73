"""cvland's resolver on the network: UDP and TCP port 53 on the resolver's overlay address.

Only this host may ask (the source must be one of the node's own addresses or loopback): a peer that
sends a query to the address through the tunnel is REFUSED. Forwarded queries go out with dnspython's
own clients, each upstream tried in turn with a bounded timeout."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from typing import cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode

from cvlan.cvland.resolver import Forward, Table, route

log = logging.getLogger(__name__)

PORT = 53
FORWARD_TIMEOUT_S = 2.0
"""Per upstream; at most MAX_UPSTREAMS are tried, so a query is answered within about 8 s."""
MAX_UPSTREAMS = 4
TCP_IDLE_S = 10.0
MAX_TCP_CONNS = 64
MAX_PENDING = 256
"""UDP queries being answered at once (forwarding ones wait for upstreams); more are dropped."""


class Resolver:
    """The table, the upstreams and the listeners; swap table/upstreams at any time (one assignment)."""

    def __init__(self) -> None:
        self.table: Table | None = None
        self.upstreams: tuple[str, ...] = ()
        self.local: frozenset[str] = frozenset()
        """Source addresses allowed to ask besides loopback (the node's own addresses)."""
        self.address = ""
        self.upstream_port = PORT
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_conns = 0
        self.queries = 0
        self.forwarded = 0
        self.refused = 0

    @property
    def listening(self) -> bool:
        return self._udp is not None

    async def listen(self, address: str, port: int = PORT) -> None:
        """Listen on address (UDP and TCP); a no-op if already there."""
        if self.address == address and self.listening:
            return
        await self.close()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(address, port))
        self._udp = transport
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, address, port, reuse_address=True)
        except OSError:
            await self.close()
            raise
        self.address = address

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)
            self._tcp = None
        self.address = ""

    def allowed(self, src: str) -> bool:
        ip = ipaddress.ip_address(src.split("%")[0])
        return ip.is_loopback or str(ip) in self.local or str(ip) == self.address

    async def handle(self, wire: bytes, src: str, tcp: bool) -> bytes | None:
        """The answer to one query message (None: unparseable, dropped)."""
        try:
            q = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        self.queries += 1
        if not self.allowed(src):
            self.refused += 1
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.REFUSED)
            return r.to_wire()
        got = route(self.table, q, self.upstreams)
        if isinstance(got, Forward):
            self.forwarded += 1
            return await forward(q, got.servers, tcp, self.upstream_port)
        return _to_wire(got, q, tcp)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._tcp_conns += 1
        try:
            if self._tcp_conns > MAX_TCP_CONNS:
                return
            for _ in range(100):  # RFC 7766: several queries per connection
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S)
                body = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE_S)
                out = await self.handle(body, peer[0], tcp=True)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_conns -= 1
            writer.close()


def _to_wire(r: dns.message.Message, q: dns.message.Message, tcp: bool) -> bytes:
    """r encoded; over UDP at most the client's EDNS payload size (else 512, RFC 1035), and an
    empty answer with TC set (the client retries over TCP) when it does not fit."""
    size = 65535 if tcp else (max(512, min(q.payload, 4096)) if q.edns >= 0 else 512)
    try:
        return r.to_wire(max_size=size)
    except dns.exception.TooBig:
        cut = dns.message.make_response(q, recursion_available=True)
        cut.set_rcode(r.rcode())
        cut.flags |= dns.flags.TC
        return cut.to_wire()


async def forward(q: dns.message.Message, servers: tuple[str, ...], tcp: bool, port: int = PORT) -> bytes:
    """Ask each server in turn (over the transport the client used); SERVFAIL if none answers."""
    for server in servers[:MAX_UPSTREAMS]:
        try:
            if tcp:
                r = await dns.asyncquery.tcp(q, server, timeout=FORWARD_TIMEOUT_S, port=port)
            else:
                r = await dns.asyncquery.udp(
                    q, server, timeout=FORWARD_TIMEOUT_S, port=port, ignore_trailing=True
                )
            return _to_wire(r, q, tcp)
        except (dns.exception.DNSException, OSError) as e:
            log.debug("upstream %s did not answer: %s", server, e)
    fail = dns.message.make_response(q, recursion_available=True)
    fail.set_rcode(dns.rcode.SERVFAIL)
    return fail.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(self._tasks) >= MAX_PENDING:
            return  # overloaded: drop, the client retries
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            out = await self.resolver.handle(data, str(addr[0]), tcp=False)
        except Exception as e:  # one bad query must not stop the resolver
            log.warning("dns query failed: %s", e)
            return
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)
