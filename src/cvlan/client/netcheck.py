"""netcheck: what the network between this host and the relays allows, measured with STUN.

One ordinary UDP socket asks every relay's STUN server, one after the other, for the address it
sees; a second one asks again over IPv6 the servers whose name has an IPv6 address. The answers
give: whether UDP gets out at all, over IPv4 and over IPv6, the mapped endpoints, the round trip to
each relay, and the IPv4 NAT's mapping behaviour --

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
import socket
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
    """"ip:port" ("[ip]:port" over IPv6) the server saw ("" = no answer)."""
    rtt_ms: float | None = None
    error: str = ""
    family: int = 4
    """4 or 6: the IP version the question went over."""


@dataclass
class NetReport:
    udp: bool
    """Any STUN answer came back (False: UDP is blocked on the way to every relay)."""
    ipv4: bool
    """A relay answered STUN over IPv4."""
    ipv6: bool
    """A relay answered STUN over IPv6 (its STUN name has an IPv6 address, and the path carries UDP)."""
    local_port: int
    mapped_endpoint: str
    """The IPv4 endpoint the first answering server saw."""
    nat: str
    """The IPv4 NAT's mapping behaviour (NAT_TYPES)."""
    answers: list[StunAnswer] = field(default_factory=list)
    mapped_endpoint_v6: str = ""
    """The IPv6 endpoint the first server answering over IPv6 saw."""
    ipv6_address: bool = False
    """This host has a global IPv6 address (documentation and private ranges are not global)."""

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


async def addresses(server: str) -> dict[int, tuple[str, int]]:
    """The first IPv4 and the first IPv6 address of a STUN server "host:port" ({4: ..., 6: ...});
    a name may have both, a literal has one. OSError or ValueError if it has none."""
    host, port = _split(server)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    out: dict[int, tuple[str, int]] = {}
    for family, *_, addr in infos:
        version = 4 if family == socket.AF_INET else 6 if family == socket.AF_INET6 else 0
        if version:
            out.setdefault(version, (str(addr[0]), port))
    return out


@dataclass
class _Socket:
    transport: asyncio.DatagramTransport
    queue: Any


async def _ask(
    sock: _Socket, t: StunTarget, addr: tuple[str, int], version: int, timeout: float
) -> StunAnswer:
    def answer(**kw: Any) -> StunAnswer:
        return StunAnswer(t.region, t.relay, t.server, addr[0], family=version, **kw)

    try:
        r = await stun.exchange(lambda req: sock.transport.sendto(req, addr), sock.queue, addr, timeout, 2)
    except stun.StunTimeout:
        return answer(error="no answer")
    except OSError as e:  # no route (a host without IPv6): said at once, not after a timeout
        return answer(error=f"unreachable: {e.strerror}")
    ip, port = r.mapped
    return answer(mapped=f"[{ip}]:{port}" if version == 6 else f"{ip}:{port}", rtt_ms=round(r.rtt * 1000, 3))


async def _open(host: str) -> _Socket | None:
    """A UDP socket on any port of host's family; None if this host has no such family."""
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(stun.Collector, local_addr=(host, 0))
    except OSError:
        return None
    return _Socket(transport, proto.queue)


async def _ask_target(socks: dict[int, _Socket | None], t: StunTarget, timeout: float) -> list[StunAnswer]:
    try:
        addrs = await addresses(t.server)
    except (OSError, ValueError) as e:
        return [StunAnswer(t.region, t.relay, t.server, error=f"resolve: {e}")]
    out = []
    for version, addr in sorted(addrs.items()):
        sock = socks[version]
        if sock is None:
            out.append(StunAnswer(t.region, t.relay, t.server, addr[0], error="no IPv6 here", family=version))
        else:
            out.append(await _ask(sock, t, addr, version, timeout))
    return out


async def run(targets: Sequence[StunTarget], local_ips: Sequence[str], timeout: float = 1.0) -> NetReport:
    """Ask every target from one socket per IP version (sequentially: each answer is matched to its
    request), over IPv4 and, for a server whose name has an IPv6 address, over IPv6 too."""
    socks = {4: await _open("0.0.0.0"), 6: await _open("::")}
    v4 = socks[4]
    if v4 is None:
        raise OSError("no IPv4 UDP socket")
    try:
        port = int(v4.transport.get_extra_info("sockname")[1])
        answers = [a for t in targets for a in await _ask_target(socks, t, timeout)]
    finally:
        for sock in socks.values():
            if sock is not None:
                sock.transport.close()
    got4 = [a for a in answers if a.mapped and a.family == 4]
    got6 = [a for a in answers if a.mapped and a.family == 6]
    return NetReport(
        udp=bool(got4 or got6),
        ipv4=bool(got4),
        ipv6=bool(got6),
        local_port=port,
        mapped_endpoint=got4[0].mapped if got4 else "",
        nat=classify_nat(port, local_ips, [a for a in answers if a.family == 4]) if got4 else "unknown",
        answers=answers,
        mapped_endpoint_v6=got6[0].mapped if got6 else "",
        ipv6_address=any(_global_v6(ip) for ip in local_ips),
    )


def _global_v6(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.version == 6 and a.is_global
