"""Denied packets from nftables `log group N`, read over NETLINK_NETFILTER (NFLOG) and aggregated.

The firewall logs every packet it drops to an NFLOG group; this reader binds that group in the
node's network namespace (NFLOG instances are per namespace, one listener per group), asks for the
packet headers, and counts flows per (src, dst, proto, dport). Only headers are parsed; payloads are
never kept. Message layout: netlink header, nfgenmsg, then attributes (linux/netfilter/nfnetlink_log.h).

    python -m cvlan.dataplane.nflog --group 7 --seconds 5   # print denied flows as JSON lines (debugging)
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4

NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
COPY_RANGE = 64  # IP + TCP/UDP headers are all we read
PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")


class NflogError(Exception):
    """Binding the group failed (e.g. another listener holds it: errno 1)."""


@dataclass(frozen=True, slots=True)
class Flow:
    src: str
    dst: str
    proto: str
    dport: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def message(msg_type: int, flags: int, seq: int, res_id: int, attrs: bytes, family: int = 0) -> bytes:
    body = _NFGENMSG.pack(family, 0, res_id) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def config_messages(group: int) -> list[bytes]:
    """Bind the group, copy the first COPY_RANGE bytes of each packet, deliver each packet at once."""
    f = NLM_F_REQUEST | NLM_F_ACK
    return [
        message(MSG_CONFIG, f, 1, group, attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))),
        message(
            MSG_CONFIG,
            f,
            2,
            group,
            attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)),
        ),
        message(
            MSG_CONFIG,
            f,
            3,
            group,
            attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)) + attr(NFULA_CFG_TIMEOUT, struct.pack("!I", 1)),
        ),
    ]


def iter_messages(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each netlink message in a datagram; stops at a truncated one."""
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, mtype, _, _, _ = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size or off + length > len(buf):
            return
        yield mtype, buf[off + _NLMSGHDR.size : off + length]
        off += _align(length)


def iter_attrs(body: bytes) -> Iterator[tuple[int, bytes]]:
    off = _NFGENMSG.size
    while off + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, off)
        if length < _NLATTR.size or off + length > len(body):
            return
        yield kind & 0x3FFF, body[off + _NLATTR.size : off + length]
        off += _align(length)


def parse_ipv4(pkt: bytes) -> Flow | None:
    """The flow of an IPv4 packet's headers; None for anything else or a truncated header."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    proto = pkt[9]
    src = str(ipaddress.IPv4Address(pkt[12:16]))
    dst = str(ipaddress.IPv4Address(pkt[16:20]))
    dport = 0
    if proto in (6, 17):
        if len(pkt) < ihl + 4:
            return None
        dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
    return Flow(src, dst, PROTOS.get(proto, str(proto)), dport)


def parse_packet_message(body: bytes) -> tuple[str, Flow | None]:
    """(log prefix, flow) of one NFULNL_MSG_PACKET body."""
    prefix, flow = "", None
    for kind, value in iter_attrs(body):
        if kind == NFULA_PREFIX:
            prefix = value.rstrip(b"\0").decode(errors="replace")
        elif kind == NFULA_PAYLOAD:
            flow = parse_ipv4(value)
    return prefix, flow


class Aggregator:
    """Packets per flow since the last drain, bounded: flows beyond max_flows are counted as overflow."""

    def __init__(self, max_flows: int = 1000) -> None:
        self.max_flows = max_flows
        self.flows: dict[Flow, int] = {}
        self.overflow = 0
        self.total = 0
        """Packets added since this aggregator was made (never reset: the denied-packets counter)."""

    def add(self, flow: Flow, n: int = 1) -> None:
        self.total += n
        if flow in self.flows or len(self.flows) < self.max_flows:
            self.flows[flow] = self.flows.get(flow, 0) + n
        else:
            self.overflow += n

    def drain(self) -> list[tuple[Flow, int]]:
        out = sorted(self.flows.items(), key=lambda kv: -kv[1])
        self.flows, self.overflow = {}, 0
        return out


class NflogReader:
    """A bound NFLOG group in the current network namespace. Call read_ready() when the fd is readable."""

    def __init__(self, group: int, prefix: str = "") -> None:
        if not 0 <= group <= 0xFFFF:
            raise NflogError(f"nflog group {group}: must be 0-65535")
        self.group = group
        self.prefix = prefix
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for m in config_messages(group):
                self.sock.send(m)
                self._expect_ack()
        except OSError as e:
            self.sock.close()
            raise NflogError(f"bind nflog group {group}: {e.strerror}") from e
        except NflogError:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def _expect_ack(self) -> None:
        self.sock.settimeout(2)
        buf = self.sock.recv(65536)
        for mtype, body in iter_messages(buf):
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code:
                    hint = " (another listener holds this group)" if code == errno.EPERM else ""
                    raise NflogError(f"bind nflog group {self.group}: errno={code}{hint}")
                return

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_ready(self, into: Aggregator, max_datagrams: int = 256) -> int:
        """Read what is queued (non-blocking) into the aggregator; returns the packets seen."""
        seen = 0
        for _ in range(max_datagrams):
            try:
                buf = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped some: keep going
                    continue
                raise
            for mtype, body in iter_messages(buf):
                if mtype != MSG_PACKET:
                    continue
                prefix, flow = parse_packet_message(body)
                if flow is not None and prefix.startswith(self.prefix):
                    into.add(flow)
                    seen += 1
        return seen

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvlan.dataplane.nflog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--group", type=int, required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args(argv)
    try:
        r = NflogReader(a.group, a.prefix)
    except NflogError as e:
        sys.stderr.write(f"nflog: {e}\n")
        return 1
    agg = Aggregator()
    print(json.dumps({"ready": True}), flush=True)  # noqa: T201
    deadline = time.monotonic() + a.seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([r], [], [], min(left, 0.2))[0]:
            r.read_ready(agg)
    for f, n in agg.drain():
        print(json.dumps({"src": f.src, "dst": f.dst, "proto": f.proto, "dport": f.dport, "packets": n}))  # noqa: T201
    r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
