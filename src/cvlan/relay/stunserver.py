"""The relay's STUN responder (RFC 5389 Binding over UDP)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import cast

from cvlan.relay.metrics import RelayMetrics
from cvlan.wire import stun

SOFTWARE = "cvlan-relay"
CHANGE_IP_OR_PORT = 0x06
"""CHANGE-REQUEST flags (RFC 3489 / 5780). This responder has one address, so it cannot honour them."""


def observed(addr: tuple[str, int] | tuple[str, int, int, int]) -> stun.Address:
    """The client's address as seen here, with IPv4-mapped IPv6 unmapped."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), addr[1]


class StunResponder(asyncio.DatagramProtocol):
    """Answers Binding requests; everything else is ignored and counted."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = stun.parse_message(data)
        except stun.StunError:
            self.metrics.stun_bad.inc()
            return
        if msg.method != stun.Method.BINDING or msg.msg_class != stun.MessageClass.REQUEST:
            return
        if msg.attributes.get("CHANGE-REQUEST", 0) & CHANGE_IP_OR_PORT:
            # An RFC 3489 NAT-type test asking for an answer from another address: silence is the
            # answer a one-address server gives (the client then reports filtering it cannot test).
            return
        assert self.transport is not None
        self.transport.sendto(stun.binding_response(msg, observed(addr), SOFTWARE), addr)
        self.metrics.stun_requests.inc()


async def start_stun(host: str, port: int, metrics: RelayMetrics) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: StunResponder(metrics), local_addr=(host, port)
    )
    return transport
