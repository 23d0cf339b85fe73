"""STUN client: the public mapping of a UDP port, from an ordinary socket or for a port another
process owns (the WireGuard port).

A NAT maps each local port separately, so the mapping that matters is the one of the WireGuard
port itself. wireguard-go owns that port, so ``RawStunProber`` sends the Binding request from a raw
socket with a hand-built UDP header whose source port is the WireGuard port, and receives the
answer on the same raw socket. A classic BPF filter attached to it passes only IPv4 UDP datagrams
to that port that carry the STUN magic cookie; everything else (all WireGuard traffic) stays in the
kernel, so no WireGuard packet is copied into Python. The reply also reaches wireguard-go's socket,
which drops it as an unknown message type. IPv4 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from cvlan.wire import stun

SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h; not exported by the socket module
IPPROTO_UDP = 17
SOFTWARE = ""
"""No SOFTWARE in requests: RFC 3489 servers (Debian stund) drop a request whose 0x8022 length is not a
multiple of 4, and the attribute tells a server nothing it needs."""


@dataclass(frozen=True)
class StunResult:
    mapped: stun.Address
    """The public (ip, port) the server saw."""
    rtt: float
    """Seconds from request to response."""
    server: tuple[str, int]


class StunTimeout(TimeoutError):
    """No Binding response arrived. Retryable: the server may be down or the path lossy."""

    retryable = True


async def resolve(host: str, port: int) -> tuple[str, int]:
    """An IPv4 address for host (names resolved once per probe)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0]), port


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


async def probe(
    server: tuple[str, int],
    *,
    bind: tuple[str, int] = ("0.0.0.0", 0),
    timeout: float = 1.0,
    attempts: int = 3,
) -> StunResult:
    """Binding request from an ordinary UDP socket bound to ``bind``; retransmits ``attempts`` times."""
    addr = await resolve(*server)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Collector, local_addr=bind)
    try:
        return await exchange(lambda req: transport.sendto(req, addr), proto.queue, addr, timeout, attempts)
    finally:
        transport.close()


async def exchange(
    send: Callable[[bytes], None],
    queue: asyncio.Queue[tuple[bytes, tuple[str, int]]],
    server: tuple[str, int],
    timeout: float,
    attempts: int,
) -> StunResult:
    for _ in range(max(1, attempts)):
        tid = stun.new_transaction_id()
        t0 = time.monotonic()
        send(stun.binding_request(tid, SOFTWARE))
        deadline = t0 + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                data, _ = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            try:
                mapped = stun.parse_binding_response(data, tid)
            except stun.StunError:
                continue  # a late answer to an earlier attempt, or not STUN at all
            return StunResult(mapped, time.monotonic() - t0, server)
    raise StunTimeout(f"no STUN answer from {server[0]}:{server[1]} after {attempts} attempts")


# --- raw socket prober for a port owned by another process -----------------------------------------

# Classic BPF, run by the kernel on each IPv4 UDP datagram copied to the raw socket (data starts at
# the IP header). Accept: protocol 17, not a fragment, destination port == PORT, magic cookie at UDP
# payload offset 4. Offsets of jumps count from the next instruction.
_BPF_LD_B_ABS, _BPF_LD_H_ABS, _BPF_LD_H_IND, _BPF_LD_W_IND = 0x30, 0x28, 0x48, 0x40
_BPF_LDX_B_MSH, _BPF_JEQ_K, _BPF_JSET_K, _BPF_RET_K = 0xB1, 0x15, 0x45, 0x06


def stun_reply_filter(port: int) -> list[tuple[int, int, int, int]]:
    """The BPF program (code, jt, jf, k) that passes only STUN messages to UDP port ``port``."""
    return [
        (_BPF_LD_B_ABS, 0, 0, 9),  # 0: A = ip.protocol
        (_BPF_JEQ_K, 0, 8, IPPROTO_UDP),  # 1: udp? else drop
        (_BPF_LD_H_ABS, 0, 0, 6),  # 2: A = flags + fragment offset
        (_BPF_JSET_K, 6, 0, 0x1FFF),  # 3: a non-first fragment -> drop
        (_BPF_LDX_B_MSH, 0, 0, 0),  # 4: X = IP header length
        (_BPF_LD_H_IND, 0, 0, 2),  # 5: A = udp.dst_port
        (_BPF_JEQ_K, 0, 3, port),  # 6: our port? else drop
        (_BPF_LD_W_IND, 0, 0, 12),  # 7: A = 4 bytes at UDP payload offset 4
        (_BPF_JEQ_K, 0, 1, stun.MAGIC_COOKIE),  # 8: STUN cookie? else drop
        (_BPF_RET_K, 0, 0, 0xFFFF),  # 9: accept
        (_BPF_RET_K, 0, 0, 0),  # 10: drop
    ]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {unsigned short len; struct sock_filter *filter}."""
    insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def udp_datagram(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """UDP header + payload with the checksum over the IPv4 pseudo-header (RFC 768)."""
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    header = struct.pack("!HHHH", src[1], dst[1], length, 0)
    csum = _checksum(pseudo + header + payload) or 0xFFFF  # a computed 0 is sent as all ones
    return struct.pack("!HHHH", src[1], dst[1], length, csum) + payload


def source_address_for(dst: tuple[str, int]) -> str:
    """The local address the kernel would use towards dst (connect() on UDP sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(dst)
        return str(s.getsockname()[0])


class RawStunProber:
    """Learns the public mapping of UDP ``port`` while another process (wireguard-go) owns it, and
    answers Binding requests that peers send to that port (direct-path probes, see cvland), from
    that port, so that the answer crosses the same NAT mappings WireGuard traffic would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_UDP)
        self._sock.setblocking(False)
        attach_filter(self._sock, stun_reply_filter(port))
        self._drain()  # datagrams that arrived before the filter was attached
        self._pending: dict[bytes, asyncio.Future[tuple[bytes, tuple[str, int]]]] = {}
        self._reading = False
        self._src: dict[str, str] = {}
        self.seen = 0
        """Datagrams the filter let through to Python (only STUN messages to the port)."""
        self.answered = 0
        """Binding requests from peers answered."""

    def _drain(self) -> None:
        for _ in range(10_000):
            try:
                self._sock.recv(65535)
            except BlockingIOError:
                return

    def listen(self) -> None:
        """Start reading (answers and requests) on the running event loop."""
        if not self._reading:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                pkt, addr = self._sock.recvfrom(65535)
            except BlockingIOError:
                return
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 8:
                continue
            sport = struct.unpack_from("!H", pkt, ihl)[0]
            self.seen += 1
            self._dispatch(pkt[ihl + 8 :], (addr[0], sport))

    def _dispatch(self, payload: bytes, frm: tuple[str, int]) -> None:
        try:
            msg = stun.parse_message(payload)
        except stun.StunError:
            return
        if msg.method != stun.Method.BINDING:
            return
        if msg.msg_class == stun.MessageClass.REQUEST:
            self._send(frm, stun.binding_response(msg, frm))
            self.answered += 1
            return
        fut = self._pending.get(msg.transaction_id)
        if fut is not None and not fut.done():
            fut.set_result((payload, frm))

    def _send(self, dst: tuple[str, int], payload: bytes) -> None:
        src = self._src.get(dst[0])
        if src is None:
            src = self._src[dst[0]] = source_address_for(dst)
        with contextlib.suppress(OSError):
            self._sock.sendto(udp_datagram((src, self.port), dst, payload), (dst[0], 0))

    async def probe(self, server: tuple[str, int], timeout: float = 1.0, attempts: int = 3) -> StunResult:
        """A Binding request from the owned port to server (a STUN server, or a peer's cvland)."""
        addr = await resolve(*server)
        self._src.pop(addr[0], None)  # routes may have changed since the last probe
        self.listen()
        loop = asyncio.get_running_loop()
        for _ in range(max(1, attempts)):
            tid = stun.new_transaction_id()
            fut: asyncio.Future[tuple[bytes, tuple[str, int]]] = loop.create_future()
            self._pending[tid] = fut
            t0 = time.monotonic()
            try:
                self._send(addr, stun.binding_request(tid, SOFTWARE))
                payload, _ = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                continue
            finally:
                self._pending.pop(tid, None)
            try:
                return StunResult(stun.parse_binding_response(payload, tid), time.monotonic() - t0, addr)
            except stun.StunError:
                continue
        raise StunTimeout(f"no STUN answer from {addr[0]}:{addr[1]} after {attempts} attempts")

    def close(self) -> None:
        if self._reading:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._reading = False
        self._sock.close()
