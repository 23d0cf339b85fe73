"""netcheck: what the network between this host and the relays allows, measured with STUN.

One ordinary UDP socket asks every relay's STUN server, one after the other, for the address it
sees. The answers give: whether UDP gets out at all, the mapped endpoint, the round trip to each
relay, and the NAT's mapping behaviour --

    none                  the mapped address is one of this host's own: no NAT
    port-preserving       every server saw the same address and the socket's own port: peers can
                          reach this host on a predictable endpoint (direct paths work)
    endpoint-independent  every server saw the same address, on another port (still predictable)
    endpoint-dependent    servers at different addresses saw different mappings ("symmetric"):
                          a peer behind one cannot be reached directly; traffic goes through a relay
    unknown               fewer than two servers at distinct addresses answered
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cvlan.client import stun

NAT_TYPES = ("none", "port-preserving", "endpoint-independent", "endpoint-dependent", "unknown")


@dataclass(frozen=True, slots=True)
class StunTarget:
    region: str
    relay: str
    server: str
    """host:port of the relay's STUN responder."""


@dataclass(frozen=True, slots=True)
class StunAnswer:
    region: str
    relay: str
    server: str
    server_ip: str = ""
    mapped: str = ""
    """"ip:port" the server saw ("" = no answer)."""
    rtt_ms: float | None = None
    error: str = ""


@dataclass
class NetReport:
    udp: bool
    """Any STUN answer came back (False: UDP is blocked on the way to every relay)."""
    ipv4: bool
    ipv6: bool
    """This host has a global IPv6 address (relays answer STUN over IPv4 only)."""
    local_port: int
    mapped_endpoint: str
    nat: str
    answers: list[StunAnswer] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify_nat(local_port: int, local_ips: Sequence[str], answers: Sequence[StunAnswer]) -> str:
    """The NAT's mapping behaviour from the answers of servers at distinct addresses."""
    got = [a for a in answers if a.mapped]
    if got and all(a.mapped.rsplit(":", 1)[0] in local_ips for a in got):
        return "none"
    by_server: dict[str, str] = {}
    for a in got:
        by_server.setdefault(a.server_ip or a.server, a.mapped)
    if len(by_server) < 2:
        return "unknown"
    mapped = set(by_server.values())
    if len(mapped) > 1:
        return "endpoint-dependent"
    port = int(next(iter(mapped)).rsplit(":", 1)[1])
    return "port-preserving" if port == local_port else "endpoint-independent"


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


async def _ask(transport: asyncio.DatagramTransport, queue: Any, t: StunTarget, timeout: float) -> StunAnswer:
    try:
        addr = await stun.resolve(*_split(t.server))
    except (OSError, ValueError) as e:
        return StunAnswer(t.region, t.relay, t.server, error=f"resolve: {e}")
    try:
        r = await stun.exchange(lambda req: transport.sendto(req, addr), queue, addr, timeout, 2)
    except stun.StunTimeout:
        return StunAnswer(t.region, t.relay, t.server, addr[0], error="no answer")
    ip, port = r.mapped
    return StunAnswer(t.region, t.relay, t.server, addr[0], f"{ip}:{port}", round(r.rtt * 1000, 3))


async def run(targets: Sequence[StunTarget], local_ips: Sequence[str], timeout: float = 1.0) -> NetReport:
    """Ask every target from one socket (sequentially: each answer is matched to its request)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(stun.Collector, local_addr=("0.0.0.0", 0))
    try:
        port = int(transport.get_extra_info("sockname")[1])
        answers = [await _ask(transport, proto.queue, t, timeout) for t in targets]
    finally:
        transport.close()
    got = [a for a in answers if a.mapped]
    return NetReport(
        udp=bool(got),
        ipv4=bool(got),
        ipv6=any(_global_v6(ip) for ip in local_ips),
        local_port=port,
        mapped_endpoint=got[0].mapped if got else "",
        nat=classify_nat(port, local_ips, answers) if got else "unknown",
        answers=answers,
    )


def _global_v6(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.version == 6 and a.is_global
