"""Relay client and the local UDP proxy that carries WireGuard datagrams through relays.

wireguard-go sends a relayed peer's packets to 127.0.0.1:<proxy port of that peer>; the proxy wraps
each datagram into a SEND_PACKET frame addressed to the peer's key on the peer's home relay. Frames
from a relay are unwrapped and sent from the source peer's proxy port to the local WireGuard port,
so WireGuard sees every peer arrive from the endpoint it was configured with. Packets stay
encrypted end to end; nothing here reads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import aiohttp

from cvlan.common.backoff import Backoff
from cvlan.common.framequeue import FrameQueue
from cvlan.wire import relayproto as rp

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 << 20
"""Receive/send buffer of each proxy socket (the kernel caps it at net.core.rmem_max/wmem_max)."""

PacketHandler = Callable[[bytes, bytes], None]
"""(source key, packet) for each packet a relay delivers."""
HEARTBEAT_S = 10.0
"""WebSocket ping interval; a relay that does not answer within half of it is taken as dead."""
CONNECT_TIMEOUT_S = 5.0
"""TCP connect to a relay; a host that does not answer within it counts as down."""
REPLACED_WAIT_S = 30.0
"""The wait before connecting again after the relay said a newer connection with this node's key
took our place: another live process holds the key (a cloned host), and reconnecting at once would
make the two throw each other out many times a second."""


def node_ssl(cert_pem: str, key_pem: str, ca_pem: str) -> ssl.SSLContext:
    """Client TLS for a relay: verify it against the controller CA, present the node certificate."""
    import tempfile

    ctx = ssl.create_default_context(cadata=ca_pem)
    # load_cert_chain wants files; they exist only for the call, in a private directory.
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        for path, data in ((cert, cert_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    return ctx


def ws_url(url: str) -> str:
    """The relay WebSocket URL for a relay's base URL (https:// or wss://)."""
    base = url.rstrip("/")
    if base.startswith("wss://"):
        base = "https://" + base[6:]
    return base + rp.WS_PATH


@dataclass
class RelayClientStats:
    sent: int = 0
    received: int = 0
    dropped_queue: int = 0
    dropped_offline: int = 0
    connects: int = 0
    replaced: int = 0
    """Connections the relay closed because a newer one with this node's key took their place."""
    gone: dict[bytes, float] = field(default_factory=dict)


class RelayClient:
    """One WebSocket to one relay, kept up with backoff; sends never block (bounded queue)."""

    def __init__(
        self,
        url: str,
        ssl_ctx: ssl.SSLContext,
        on_packet: PacketHandler,
        *,
        queue_len: int = 512,
        queue_bytes: int = 1 << 20,
        max_backoff: float = 2.0,
        on_state: Callable[[], None] | None = None,
        on_gone: Callable[[bytes], None] | None = None,
    ) -> None:
        self.url = ws_url(url)
        self._ssl = ssl_ctx
        self.on_packet = on_packet
        self._queue = FrameQueue(queue_len, queue_bytes)
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self.region = ""
        self.stats = RelayClientStats()
        self._backoff = Backoff(0.1, max_backoff)
        self._task: asyncio.Task[None] | None = None
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.failures = 0
        """Connection attempts that failed since the last successful one."""
        self._on_state = on_state or (lambda: None)
        self._on_gone = on_gone or (lambda _: None)

    @property
    def down(self) -> bool:
        """Disconnected, and at least one attempt to connect again failed."""
        return not self.connected.is_set() and self.failures > 0

    def start(self) -> RelayClient:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected.clear()

    def send(self, dst: bytes, packet: bytes) -> None:
        """Queue a packet for dst. While disconnected, packets are dropped (WireGuard retransmits)."""
        if not self.connected.is_set():
            self.stats.dropped_offline += 1
            return
        self.stats.dropped_queue += self._queue.push(rp.send_packet(dst, packet))
        self.stats.sent += 1
        self._wake.set()

    async def ping(self, timeout: float = 2.0) -> float:
        """Round-trip time to the relay over the open connection, in seconds."""
        await asyncio.wait_for(self.connected.wait(), timeout)
        data = os.urandom(rp.PING_LEN)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[data] = fut
        t0 = time.monotonic()
        self._queue.push(rp.pack_frame(rp.Ping(data)))
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, timeout) - t0
        finally:
            self._pings.pop(data, None)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S, connect=2 * CONNECT_TIMEOUT_S
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                was = self.connected.is_set()
                replaced = False
                try:
                    replaced = await self._connect_once(session)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.debug("relay connection failed", extra={"endpoint": self.url, "reason": str(e)})
                    if not self.connected.is_set():
                        self.failures += 1
                self.connected.clear()
                self._queue.clear()
                if was or self.failures == 1:
                    self._on_state()  # lost, or found down: whoever routes through us looks again
                await asyncio.sleep(REPLACED_WAIT_S if replaced else self._backoff.next())

    async def _connect_once(self, session: aiohttp.ClientSession) -> bool:
        """One connection, served until it ends; True when the relay ended it because a newer
        connection with this node's key took its place."""
        async with session.ws_connect(
            self.url,
            ssl=self._ssl,
            protocols=(rp.WS_PROTOCOL,),
            heartbeat=HEARTBEAT_S,
            max_msg_size=rp.FRAME_HEADER_LEN + rp.KEY_LEN + rp.MAX_PACKET,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        ) as ws:
            self._ws = ws
            self.stats.connects += 1
            self._backoff.reset()
            self.failures = 0
            self.connected.set()
            self._on_state()
            log.info("relay connected", extra={"endpoint": self.url})
            writer = asyncio.create_task(self._writer(ws))
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        self._handle(msg.data)
            finally:
                writer.cancel()
                with suppress(asyncio.CancelledError, ConnectionError):
                    await writer
                self._ws = None
                log.info("relay disconnected", extra={"endpoint": self.url})
            if ws.close_code == rp.CLOSE_REPLACED:
                self.stats.replaced += 1
                log.warning(
                    "relay connection taken over by another with this node's key (is the state dir "
                    f"copied to another host?); connecting again in {REPLACED_WAIT_S:.0f} s",
                    extra={"endpoint": self.url},
                )
                return True
        return False

    def _handle(self, data: bytes) -> None:
        if len(data) >= rp.FRAME_HEADER_LEN + rp.KEY_LEN and data[0] == rp.FrameType.RECV_PACKET:
            self.stats.received += 1
            head = rp.FRAME_HEADER_LEN
            self.on_packet(data[head : head + rp.KEY_LEN], data[head + rp.KEY_LEN :])
            return
        try:
            frame = rp.parse_frame(data)
        except rp.FrameError as e:
            log.debug("bad relay frame", extra={"reason": str(e)})
            return
        if isinstance(frame, rp.ServerInfo):
            self.region = frame.region
        elif isinstance(frame, rp.Pong):
            fut = self._pings.get(frame.data)
            if fut is not None and not fut.done():
                fut.set_result(time.monotonic())
        elif isinstance(frame, rp.PeerGone):
            self.stats.gone[frame.key] = time.monotonic()
            self._on_gone(frame.key)

    async def _writer(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await ws.send_bytes(self._queue.pop())


class RelayProxy:
    """Per-peer loopback UDP ports that wireguard-go uses as the endpoints of relayed peers.

    ``add_peer`` may be called from any thread (cvland plans in a worker thread): it binds the socket
    at once and hands the socket to the event loop. Everything else runs on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wg_port: int, host: str = "127.0.0.1") -> None:
        self.loop = loop
        self.wg_port = wg_port
        self.host = host
        self._lock = threading.Lock()
        self._socks: dict[bytes, socket.socket] = {}
        self._routes: dict[bytes, RelayClient] = {}
        self.allowed: set[bytes] = set()
        """Peers a packet from a relay may create a proxy port for (the current peer list)."""
        self.dropped_unknown = 0
        self.dropped_foreign = 0
        self.delivered = 0
        self.bytes_to_relay = 0
        """WireGuard packet bytes sent out through a relay (cvland's relay-proxied traffic, out)."""
        self.bytes_from_relay = 0
        """Packet bytes that came from a relay and were handed to WireGuard (in)."""

    def add_peer(self, key: bytes, client: RelayClient | None) -> int:
        """The proxy port for key (created once); packets from WireGuard go out through client."""
        with self._lock:
            sock = self._socks.get(key)
            if sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                # WireGuard sends in bursts; a small receive buffer would drop them before we read.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.bind((self.host, 0))
                sock.setblocking(False)
                self._socks[key] = sock
                self.loop.call_soon_threadsafe(self._attach, key, sock)
            if client is not None:
                self.loop.call_soon_threadsafe(self._routes.__setitem__, key, client)
            return int(sock.getsockname()[1])

    def _attach(self, key: bytes, sock: socket.socket) -> None:
        if self._socks.get(key) is sock:
            self.loop.add_reader(sock.fileno(), self._on_readable, key, sock)

    def _on_readable(self, key: bytes, sock: socket.socket) -> None:
        client = self._routes.get(key)
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr[1] != self.wg_port or client is None:
                self.dropped_foreign += 1
                continue
            self.bytes_to_relay += len(data)
            client.send(key, data)

    def set_route(self, key: bytes, client: RelayClient) -> None:
        self._routes[key] = client

    def route_of(self, key: bytes) -> RelayClient | None:
        """The relay client key's packets go out through, if any."""
        return self._routes.get(key)

    def has_port(self, port: int) -> bool:
        with self._lock:
            return any(s.getsockname()[1] == port for s in self._socks.values())

    def port_of(self, key: bytes) -> int:
        return int(self._socks[key].getsockname()[1])

    def endpoint_of(self, key: bytes) -> str:
        return f"{self.host}:{self.port_of(key)}"

    def peers(self) -> set[bytes]:
        return set(self._socks)

    def remove_peer(self, key: bytes) -> None:
        with self._lock:
            sock = self._socks.pop(key, None)
        self._routes.pop(key, None)
        if sock is not None:
            with suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()

    def deliver(self, src: bytes, packet: bytes, via: RelayClient | None = None) -> None:
        """A packet from a relay: hand it to WireGuard from src's proxy port. A known peer without a
        proxy port yet gets one, so a peer that chose the relay can reach us while we still try
        direct (WireGuard then follows it onto the relay path by roaming)."""
        sock = self._socks.get(src)
        if sock is None:
            if src not in self.allowed:
                self.dropped_unknown += 1
                return
            self.add_peer(src, None)
            sock = self._socks[src]
        if via is not None and src not in self._routes:
            self._routes[src] = via  # answer over the relay the peer used
        try:
            sock.sendto(packet, (self.host, self.wg_port))
            self.delivered += 1
            self.bytes_from_relay += len(packet)
        except OSError:
            self.dropped_unknown += 1

    def close(self) -> None:
        for key in list(self._socks):
            self.remove_peer(key)


class RelayPool:
    """One RelayClient per relay URL in use, all delivering into one proxy."""

    def __init__(
        self,
        ssl_ctx: ssl.SSLContext,
        proxy: RelayProxy,
        on_change: Callable[[], None] | None = None,
        on_gone: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """Runs on the event loop. on_change is called when a client connects or is found down;
        on_gone(url, key) when the relay at url says key is not connected there."""
        self.ssl_ctx = ssl_ctx
        self.proxy = proxy
        self.clients: dict[str, RelayClient] = {}
        self.on_change = on_change
        self.on_gone = on_gone

    def down(self, url: str) -> bool:
        """Whether the relay at url is known to be unreachable from here (never tried: no)."""
        c = self.clients.get(url)
        return c is not None and c.down

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _gone(self, url: str, key: bytes) -> None:
        if self.on_gone is not None:
            self.on_gone(url, key)

    def get(self, url: str) -> RelayClient:
        c = self.clients.get(url)
        if c is None:
            holder: list[RelayClient] = []
            c = RelayClient(
                url,
                self.ssl_ctx,
                lambda src, pkt: self.proxy.deliver(src, pkt, holder[0]),
                on_state=self._changed,
                on_gone=lambda key: self._gone(url, key),
            )
            holder.append(c)
            self.clients[url] = c.start()
        return c

    async def retain(self, urls: set[str]) -> None:
        """Close clients whose relay is no longer used."""
        for url in list(self.clients):
            if url not in urls:
                await self.clients.pop(url).close()

    async def close(self) -> None:
        await self.retain(set())
        self.proxy.close()
