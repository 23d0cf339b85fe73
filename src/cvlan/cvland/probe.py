"""Peer health probes: a UDP echo over the tunnel, to every peer's overlay address.

Every node answers probes on (overlay address, PROBE_PORT) and sends one to each peer every
interval from that same socket. The packet filter accepts the port from the CVLAN before the
CVLAN's policy rules (dataplane/firewall.py), so the figures say whether the tunnel carries
packets, whatever the policy allows. ``ProbeBook`` keeps the last PROBE_WINDOW probes per peer
(pure accounting); ``Prober`` owns the socket in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import statistics
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cvlan.wire import healthprobe as hp

log = logging.getLogger(__name__)

PROBE_WINDOW = 20
"""Probes kept per peer: loss and RTT are over the last 20 probes (40 s at the default interval)."""
PROBE_TIMEOUT_S = 3.0
"""A probe without a reply after this long counts as lost; younger ones are not counted yet."""
PROBE_INTERVAL_S = 2.0
IP_FREEBIND = 15
"""linux/in.h: bind to the overlay address before cvland has put it on the interface."""


@dataclass(frozen=True, slots=True)
class ProbeStats:
    sent: int
    """Probes in the window old enough to have been answered (or answered already)."""
    answered: int
    rtt_s: float | None
    """Median round trip of the answered probes (None: none answered)."""

    @property
    def loss(self) -> float:
        return 0.0 if self.sent == 0 else 1.0 - self.answered / self.sent


@dataclass(slots=True)
class _Sent:
    seq: int
    at: float
    rtt: float | None = None


@dataclass(slots=True)
class _PeerProbes:
    address: str
    window: deque[_Sent] = field(default_factory=lambda: deque(maxlen=PROBE_WINDOW))


class ProbeBook:
    """Per-peer probe accounting (thread-safe: the event loop writes, the host thread reads)."""

    def __init__(self, window: int = PROBE_WINDOW, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._window = window
        self._timeout = timeout_s
        self._peers: dict[str, _PeerProbes] = {}
        self._by_addr: dict[str, str] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def set_targets(self, targets: dict[str, str]) -> None:
        """key -> overlay IP. Peers that left are forgotten; a peer whose address changed starts over."""
        with self._lock:
            nxt: dict[str, _PeerProbes] = {}
            for key, addr in targets.items():
                old = self._peers.get(key)
                nxt[key] = old if old is not None and old.address == addr else self._new(addr)
            self._peers = nxt
            self._by_addr = {p.address: k for k, p in nxt.items()}

    def _new(self, addr: str) -> _PeerProbes:
        return _PeerProbes(addr, deque(maxlen=self._window))

    def restart(self, key: str) -> None:
        """Forget key's probes: its path changed, and loss on the old one (or while the tunnel was
        still coming up) says nothing about the new one."""
        with self._lock:
            p = self._peers.get(key)
            if p is not None:
                p.window.clear()

    def targets(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, p.address) for k, p in self._peers.items()]

    def sent(self, key: str, now: float) -> int | None:
        """Record a probe to key at monotonic time now; its sequence number (None: unknown peer)."""
        with self._lock:
            p = self._peers.get(key)
            if p is None:
                return None
            self._seq = (self._seq + 1) % 2**32
            p.window.append(_Sent(self._seq, now))
            return self._seq

    def answered(self, addr: str, seq: int, now: float) -> bool:
        """A reply from overlay IP addr; False if it matches no probe still in the window."""
        with self._lock:
            key = self._by_addr.get(addr)
            p = self._peers.get(key) if key is not None else None
            if p is None:
                return False
            for s in p.window:
                if s.seq == seq and s.rtt is None:
                    s.rtt = max(0.0, now - s.at)
                    return True
            return False

    def stats(self, key: str, now: float) -> ProbeStats:
        with self._lock:
            p = self._peers.get(key)
            done = [s for s in p.window if s.rtt is not None or now - s.at >= self._timeout] if p else []
        rtts = [s.rtt for s in done if s.rtt is not None]
        return ProbeStats(len(done), len(rtts), statistics.median(rtts) if rtts else None)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_packet(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an unreachable peer answers ICMP; the missing reply is the measurement


class Prober:
    """Answers and sends health probes on the node's overlay address (IPv4)."""

    def __init__(self, book: ProbeBook, monotonic: Callable[[], float]) -> None:
        self.book = book
        self._mono = monotonic
        self._transport: asyncio.DatagramTransport | None = None
        self._bound = ""
        self._subnet: ipaddress.IPv4Network | None = None

    async def ensure(self, address: str, subnet: str) -> None:
        """Listen on address (an overlay /32 CIDR or IP; "" closes); rebinds when it changes."""
        ip = address.split("/")[0]
        self._subnet = ipaddress.IPv4Network(subnet, strict=False) if subnet else None
        if ip == self._bound and self._transport is not None:
            return
        self.close()
        if not ip:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind((ip, hp.PROBE_PORT))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            log.warning("health probes off: bind %s:%d: %s", ip, hp.PROBE_PORT, e.strerror or e)
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(self._received), sock=sock)
        self._transport = transport
        self._bound = ip

    def send_round(self) -> int:
        """One probe to every target; how many were sent."""
        if self._transport is None:
            return 0
        n = 0
        for key, addr in self.book.targets():
            now = self._mono()
            seq = self.book.sent(key, now)
            if seq is None:
                continue
            with contextlib.suppress(OSError):
                self._transport.sendto(
                    hp.pack(hp.Probe(hp.ProbeKind.REQUEST, seq, int(now * 1e9))), (addr, hp.PROBE_PORT)
                )
                n += 1
        return n

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            p = hp.parse(data)
        except hp.ProbeError:
            return
        if self._subnet is None or ipaddress.IPv4Address(addr[0]) not in self._subnet:
            return  # only members of the CVLAN are answered
        if p.kind is hp.ProbeKind.REQUEST:
            if self._transport is not None:
                with contextlib.suppress(OSError):
                    self._transport.sendto(hp.pack(hp.reply_to(p)), addr)
        else:
            self.book.answered(addr[0], p.seq, self._mono())

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._bound = ""
