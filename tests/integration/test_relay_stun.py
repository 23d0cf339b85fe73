"""The relay's STUN responder answered by our STUN clients on loopback: an ordinary socket, and the
raw-socket prober for a port another socket owns."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from cvlan.client import stun as stunc
from cvlan.relay.metrics import RelayMetrics
from cvlan.relay.stunserver import start_stun
from cvlan.wire import stun
from tests.harness.relay import free_udp_port


def _sample(m: RelayMetrics, name: str) -> float | None:
    return m.registry.get_sample_value(name)


@pytest.fixture
async def responder() -> AsyncIterator[tuple[int, RelayMetrics]]:
    m = RelayMetrics()
    port = free_udp_port()
    t = await start_stun("127.0.0.1", port, m)
    try:
        yield port, m
    finally:
        t.close()


async def test_probe_from_ordinary_socket(responder: tuple[int, RelayMetrics]) -> None:
    port, m = responder
    local = free_udp_port()
    r = await stunc.probe(("127.0.0.1", port), bind=("127.0.0.1", local))
    assert r.mapped == ("127.0.0.1", local)
    assert r.rtt >= 0
    assert _sample(m, "cvlan_relay_stun_requests_total") == 1


async def test_probe_times_out_with_a_retryable_error() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(stunc.StunTimeout, match="after 2 attempts") as e:
            await stunc.probe(silent.getsockname(), timeout=0.2, attempts=2)
        assert e.value.retryable
    finally:
        silent.close()


async def test_responder_ignores_non_stun_and_change_requests(responder: tuple[int, RelayMetrics]) -> None:
    port, m = responder
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(b"\x01\x00\x00\x00" + os.urandom(144), ("127.0.0.1", port))  # looks like WireGuard
        tid = stun.new_transaction_id()
        req = stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, tid, {"CHANGE-REQUEST": 0x06})
        s.sendto(stun.pack_message(req), ("127.0.0.1", port))
        await asyncio.sleep(0.3)
        with pytest.raises(BlockingIOError):
            s.recvfrom(2048)
    assert _sample(m, "cvlan_relay_stun_bad_datagrams_total") == 1
    assert _sample(m, "cvlan_relay_stun_requests_total") == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root (CAP_NET_RAW)")
async def test_raw_prober_learns_mapping_of_a_port_owned_by_another_socket(
    responder: tuple[int, RelayMetrics],
) -> None:
    port, _ = responder
    owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # stands in for wireguard-go
    owner.bind(("127.0.0.1", 0))
    owned = owner.getsockname()[1]
    prober = stunc.RawStunProber(owned)
    noise = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(200):  # traffic to the owned port that is not STUN never reaches Python
            noise.sendto(b"\x04\x00\x00\x00" + os.urandom(60), ("127.0.0.1", owned))
        r = await prober.probe(("127.0.0.1", port))
        assert r.mapped == ("127.0.0.1", owned)
        assert prober.seen == 1
        owner.settimeout(1)
        got = [owner.recv(2048) for _ in range(201)]  # the owner saw the noise and the STUN reply
        assert sum(stun.is_stun(g) for g in got) == 1
    finally:
        prober.close()
        owner.close()
        noise.close()


def test_udp_checksum_verifies() -> None:
    src, dst = ("192.0.2.1", 51820), ("198.51.100.7", 3478)
    for payload in (b"", b"x", stun.binding_request(bytes(12))):
        d = stunc.udp_datagram(src, dst, payload)
        pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 17, len(d))
        assert stunc._checksum(pseudo + d) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root (CAP_NET_RAW)")
async def test_two_raw_probers_answer_each_other_from_their_owned_ports() -> None:
    owners = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for o in owners:
        o.bind(("127.0.0.1", 0))
    ports = [o.getsockname()[1] for o in owners]
    probers = [stunc.RawStunProber(p) for p in ports]
    try:
        probers[1].listen()
        r = await probers[0].probe(("127.0.0.1", ports[1]))
        assert r.mapped == ("127.0.0.1", ports[0])  # what the peer saw: our owned port
        assert probers[1].answered == 1
    finally:
        for x in probers:
            x.close()
        for o in owners:
            o.close()
