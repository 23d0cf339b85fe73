"""cvland's resolver: what it answers from the map (table-driven, every record type), what it refuses,
and what it forwards (to a real upstream on loopback, over UDP and TCP). About 1 s."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from cvlan.cvland.dnsserver import Resolver
from cvlan.cvland.resolver import Forward, Table, route
from cvlan.wire.ipc import DnsForwardSpec, DnsHost, DnsRecordSpec, DnsState

ZONE = "office.acme.cvlan.internal"
STATE = DnsState(
    zone=ZONE,
    resolver="100.100.100.100",
    hosts=[
        DnsHost(name=f"n0.{ZONE}", address="100.64.0.1"),
        DnsHost(name=f"db1.{ZONE}", address="100.64.0.2"),
    ],
    records=[
        DnsRecordSpec(name="git", type="A", value="10.1.0.7"),
        DnsRecordSpec(name="n0", type="A", value="10.9.9.9"),  # a node's own name wins
        DnsRecordSpec(name="git", type="AAAA", value="fd00::7"),
        DnsRecordSpec(name="www", type="CNAME", value=f"git.{ZONE}."),
        DnsRecordSpec(name="docs", type="CNAME", value="docs.example.org."),
        DnsRecordSpec(name="loop", type="CNAME", value=f"loop.{ZONE}."),
        DnsRecordSpec(name="@", type="TXT", value='"v=spf1 -all"'),
        DnsRecordSpec(name="@", type="MX", value=f"10 git.{ZONE}.", ttl=300),
        DnsRecordSpec(name="_ldap._tcp", type="SRV", value=f"0 5 389 db1.{ZONE}."),
    ],
    forwarders=[DnsForwardSpec(domain="corp.example", servers=["10.1.0.53"])],
)
UPSTREAMS = ("192.0.2.53",)


def ask(name: str, rtype: str = "A") -> dns.message.Message | Forward:
    return route(Table.build(STATE), dns.message.make_query(name, rtype), UPSTREAMS)


def _rrs(r: dns.message.Message) -> list[str]:
    return [f"{rs.name} {dns.rdatatype.to_text(rs.rdtype)} {rd}" for rs in r.answer for rd in rs]


ANSWERED = [
    # (name, type, rcode, answer)
    (f"n0.{ZONE}", "A", "NOERROR", [f"n0.{ZONE}. A 100.64.0.1"]),
    (f"DB1.{ZONE}.", "A", "NOERROR", [f"db1.{ZONE}. A 100.64.0.2"]),
    (f"git.{ZONE}", "A", "NOERROR", [f"git.{ZONE}. A 10.1.0.7"]),
    (f"git.{ZONE}", "AAAA", "NOERROR", [f"git.{ZONE}. AAAA fd00::7"]),
    (f"www.{ZONE}", "A", "NOERROR", [f"www.{ZONE}. CNAME git.{ZONE}.", f"git.{ZONE}. A 10.1.0.7"]),
    (f"www.{ZONE}", "CNAME", "NOERROR", [f"www.{ZONE}. CNAME git.{ZONE}."]),
    (f"docs.{ZONE}", "A", "NOERROR", [f"docs.{ZONE}. CNAME docs.example.org."]),
    (ZONE, "TXT", "NOERROR", [f'{ZONE}. TXT "v=spf1 -all"']),
    (ZONE, "MX", "NOERROR", [f"{ZONE}. MX 10 git.{ZONE}."]),
    (f"_ldap._tcp.{ZONE}", "SRV", "NOERROR", [f"_ldap._tcp.{ZONE}. SRV 0 5 389 db1.{ZONE}."]),
    (ZONE, "SOA", "NOERROR", [f"{ZONE}. SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60"]),
    ("2.0.64.100.in-addr.arpa", "PTR", "NOERROR", [f"2.0.64.100.in-addr.arpa. PTR db1.{ZONE}."]),
    # NODATA: the name exists, not with this type (or is an empty non-terminal above a record).
    (f"n0.{ZONE}", "AAAA", "NOERROR", []),
    (f"_tcp.{ZONE}", "SRV", "NOERROR", []),
    # Names nobody may see: unknown, a peer the policy hides (not in hosts), another CVLAN's, another
    # tenant's, the overlay domain itself.
    (f"nope.{ZONE}", "A", "NXDOMAIN", []),
    (f"n9.{ZONE}", "A", "NXDOMAIN", []),
    ("n0.lab.acme.cvlan.internal", "A", "NXDOMAIN", []),
    ("n0.office.other.cvlan.internal", "A", "NXDOMAIN", []),
    ("cvlan.internal", "A", "NXDOMAIN", []),
]


@pytest.mark.parametrize(("name", "rtype", "rcode", "answer"), ANSWERED)
def test_names_in_the_overlay_are_answered_here(name: str, rtype: str, rcode: str, answer: list[str]) -> None:
    r = ask(name, rtype)
    assert isinstance(r, dns.message.Message)
    assert (dns.rcode.to_text(r.rcode()), _rrs(r)) == (rcode, answer)
    assert r.flags & dns.flags.AA
    if not answer:
        assert [dns.rdatatype.to_text(rs.rdtype) for rs in r.authority] == ["SOA"]


def test_every_record_type_a_tenant_may_define_is_served() -> None:
    from cvlan.wire.dnsnames import RECORD_TYPES

    served = {rt for name, rt, rcode, answer in ANSWERED if answer and rt in RECORD_TYPES}
    assert served == set(RECORD_TYPES)


def test_a_cname_loop_is_cut() -> None:
    r = ask(f"loop.{ZONE}")
    assert isinstance(r, dns.message.Message) and 1 <= len(r.answer) <= 8


FORWARDED = [
    ("host.corp.example", Forward(("10.1.0.53",), "corp.example")),
    ("corp.example", Forward(("10.1.0.53",), "corp.example")),
    ("www.example.org", Forward(UPSTREAMS)),
    ("1.0.0.10.in-addr.arpa", Forward(UPSTREAMS)),
    ("notcorp.example", Forward(UPSTREAMS)),
]


@pytest.mark.parametrize(("name", "where"), FORWARDED)
def test_other_names_are_forwarded(name: str, where: Forward) -> None:
    assert ask(name) == where


def test_without_upstreams_the_answer_is_servfail() -> None:
    r = route(Table.build(STATE), dns.message.make_query("www.example.org", "A"), ())
    assert isinstance(r, dns.message.Message) and r.rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zone": "office"}, "expected <cvlan>.<tenant>.<domain>"),
        ({"resolver": "nope"}, "resolver 'nope': expected an IPv4 address"),
        ({"hosts": [DnsHost(name="n0.elsewhere.example", address="100.64.0.1")]}, "outside the zone"),
        ({"hosts": [DnsHost(name=f"n0.{ZONE}", address="100.64.0.300")]}, "is not an IP address"),
        ({"records": [DnsRecordSpec(name="x", type="A", value="not-an-ip")]}, "is not valid A data"),
        ({"records": [DnsRecordSpec(name="x", type="NS", value="ns.example.")]}, "expected one of"),
        ({"forwarders": [DnsForwardSpec(domain="corp.example", servers=["x"])]}, "expected an IP address"),
    ],
)
def test_a_bad_state_is_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Table.build(STATE.model_copy(update=change))


# --- on the network ------------------------------------------------------------------------------


async def _listen_pair() -> tuple[Resolver, Resolver]:
    """The upstream on 127.0.0.2 and the node on 127.0.0.1, on one port free for UDP and TCP on both
    addresses (a port the kernel gave for UDP may be taken for TCP by another process: try another)."""
    for _ in range(20):
        upstream = Resolver()
        upstream.table = Table.build(
            DnsState(
                zone="a.b.corp.example",
                resolver="127.0.0.2",
                records=[DnsRecordSpec(name="@", type="A", value="10.9.9.9")],
            )
        )
        node = Resolver()
        node.table = Table.build(STATE.model_copy(update={"forwarders": []}))
        node.upstreams = ("127.0.0.2",)
        try:
            await upstream.listen("127.0.0.2", 0)
            port = upstream._udp.get_extra_info("sockname")[1]  # type: ignore[union-attr]
            await upstream.close()
            await upstream.listen("127.0.0.2", port)
            node.upstream_port = port
            await node.listen("127.0.0.1", port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            await upstream.close()
            await node.close()
            continue
        return node, upstream
    raise AssertionError("no port free for UDP and TCP on 127.0.0.1 and 127.0.0.2 in 20 tries")


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Resolver, Resolver]]:
    """The node's resolver on 127.0.0.1 and an upstream (another Resolver) on 127.0.0.2, both on one
    free port: the upstream answers for corp.example from its own table."""
    node, upstream = await _listen_pair()
    yield node, upstream
    await node.close()
    await upstream.close()


async def test_udp_and_tcp_answers_and_forwarding(servers: tuple[Resolver, Resolver]) -> None:
    node, _ = servers
    port = node.upstream_port
    q = dns.message.make_query(f"db1.{ZONE}", "A")
    for r in (
        await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3),
        await dns.asyncquery.tcp(q, "127.0.0.1", port=port, timeout=3),
    ):
        assert _rrs(r) == [f"db1.{ZONE}. A 100.64.0.2"]
    fq = dns.message.make_query("a.b.corp.example", "A")
    for r in (
        await dns.asyncquery.udp(fq, "127.0.0.1", port=port, timeout=5),
        await dns.asyncquery.tcp(fq, "127.0.0.1", port=port, timeout=5),
    ):
        assert _rrs(r) == ["a.b.corp.example. A 10.9.9.9"]
    assert node.forwarded == 2


async def test_an_upstream_that_does_not_answer_gives_servfail(servers: tuple[Resolver, Resolver]) -> None:
    node, upstream = servers
    await upstream.close()
    r = await dns.asyncquery.tcp(
        dns.message.make_query("www.example.org", "A"), "127.0.0.1", port=node.upstream_port, timeout=5
    )
    assert r.rcode() == dns.rcode.SERVFAIL


async def test_queries_from_other_hosts_are_refused() -> None:
    node = Resolver()
    node.table = Table.build(STATE)
    node.local = frozenset({"100.64.0.1", "100.100.100.100"})
    q = dns.message.make_query(f"db1.{ZONE}", "A").to_wire()
    for src, rcode in [
        ("100.64.0.2", dns.rcode.REFUSED),
        ("100.64.0.1", dns.rcode.NOERROR),
        ("127.0.0.1", dns.rcode.NOERROR),
    ]:
        out = await node.handle(q, src, tcp=False)
        assert out is not None and dns.message.from_wire(out).rcode() == rcode, src
    assert await node.handle(b"\x00garbage", "127.0.0.1", tcp=False) is None


async def test_an_answer_too_large_for_udp_is_truncated() -> None:
    big = [DnsRecordSpec(name="big", type="TXT", value=f'"{"x" * 200} {i}"') for i in range(10)]
    node = Resolver()
    node.table = Table.build(STATE.model_copy(update={"records": big}))
    out = await node.handle(
        dns.message.make_query(f"big.{ZONE}", "TXT", use_edns=False).to_wire(), "127.0.0.1", tcp=False
    )
    assert out is not None and len(out) <= 512
    r = dns.message.from_wire(out)
    assert r.flags & dns.flags.TC and not r.answer
    full = await node.handle(dns.message.make_query(f"big.{ZONE}", "TXT").to_wire(), "127.0.0.1", tcp=True)
    assert full is not None and len(dns.message.from_wire(full).answer[0]) == 10
