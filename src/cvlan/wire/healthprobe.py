"""Health-probe codec: the UDP echo every cvland sends to its peers' overlay addresses.

The probe runs inside the tunnel, to UDP port PROBE_PORT on the peer's overlay address. Each node's
packet filter accepts that port from its CVLAN ahead of the CVLAN's policy rules, so a policy that
allows no ICMP (or nothing at all) does not hide a working tunnel. A probe is 17 bytes:

    4B magic "CVHP" | 1B kind (1 request, 2 reply) | 4B sequence | 8B sender's monotonic ns

A reply carries the request's sequence and time unchanged, so the sender measures the round trip
with its own clock only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

PROBE_PORT = 41720
"""UDP port of the health-probe responder on every node's overlay address."""
MAGIC = b"CVHP"
_FORMAT = struct.Struct("!4sBIQ")
PROBE_LEN = _FORMAT.size


class ProbeError(ValueError):
    """Bytes that are not one health probe."""


class ProbeKind(IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclass(frozen=True, slots=True)
class Probe:
    kind: ProbeKind
    seq: int
    """0 .. 2**32-1, chosen by the sender."""
    sent_ns: int
    """The sender's monotonic clock in nanoseconds when it sent the request."""


def pack(p: Probe) -> bytes:
    if not 0 <= p.seq < 2**32 or not 0 <= p.sent_ns < 2**64:
        raise ProbeError(f"probe seq {p.seq} or time {p.sent_ns} out of range")
    return _FORMAT.pack(MAGIC, p.kind, p.seq, p.sent_ns)


def parse(b: bytes) -> Probe:
    if len(b) != PROBE_LEN:
        raise ProbeError(f"health probe is {len(b)} bytes, expected {PROBE_LEN}")
    magic, kind, seq, sent = _FORMAT.unpack(b)
    if magic != MAGIC:
        raise ProbeError("health probe magic is not CVHP")
    try:
        return Probe(ProbeKind(kind), seq, sent)
    except ValueError:
        raise ProbeError(f"health probe kind {kind} is neither request (1) nor reply (2)") from None


def reply_to(req: Probe) -> Probe:
    return Probe(ProbeKind.REPLY, req.seq, req.sent_ns)
