"""Node polls on the proxy socket are answered by the lean HTTP/1.1 server; every other request on
that socket is handed, with its connection, to the full web stack. Raw bytes on the socket, as a
TLS front sends them, against a real controller process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from cvlan.client import tls
from cvlan.common import adminconf
from cvlan.controller.nodeapi.lean import MAX_BUFFERED
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb
from tests.harness import proxysocket
from tests.harness.controller import free_port

BIN = Path(sys.executable).parent
FAST_POLLS = 'cvlan_proxy_fast_requests_total{route="/v1/poll"}'
READ_MAX = 256 * 1024
"""The most one read of the controller's transport takes in (uvloop: 250 kB, asyncio: 256 KiB)."""
pytestmark = pytest.mark.timeout(120)


@dataclass
class Ctl:
    proc: subprocess.Popen[bytes]
    sock: Path
    conf: adminconf.AdminConf
    token: str
    node_id: int
    cert: bytes
    """The node's certificate as the front forwards it (URL-escaped PEM)."""
    metrics_port: int

    async def metric(self, name: str) -> float:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r,
        ):
            m = re.search(rf"^{re.escape(name)} (\S+)$", await r.text(), re.M)
            return float(m.group(1)) if m else 0.0

    async def register(self, hostname: str) -> int:
        return (await proxysocket.register(self.conf, self.token, hostname)).node_id


async def _up(tmp: Path, *extra_env: tuple[str, str]) -> Ctl:
    data, sock = tmp / "ctl", tmp / "ctl.sock"
    metrics_port = free_port()
    proc = proxysocket.serve(data, sock, *extra_env, metrics_port=metrics_port)
    conf = await proxysocket.wait_ready(proc, data, sock)
    token, reg = await proxysocket.enrol(conf, "n1")
    cert = urllib.parse.quote(reg.cert_pem).encode()
    return Ctl(proc, sock, conf, token, reg.node_id, cert, metrics_port)


def _stop(ctl: Ctl) -> float:
    t0 = time.monotonic()
    ctl.proc.send_signal(signal.SIGTERM)
    ctl.proc.communicate(timeout=30)
    assert ctl.proc.returncode == 0
    return time.monotonic() - t0


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Ctl]:
    c = await _up(tmp_path)
    try:
        yield c
    finally:
        if c.proc.poll() is None:
            _stop(c)


def poll_bytes(cert: bytes, msg: pb.PollRequest | bytes, *, extra: bytes = b"") -> bytes:
    body = msg if isinstance(msg, bytes) else msg.SerializeToString()
    return (
        b"POST /v1/poll HTTP/1.1\r\nhost: front\r\ncontent-type: application/x-protobuf\r\n"
        b"content-length: %d\r\nx-client-cert: %s\r\n%s\r\n%s" % (len(body), cert, extra, body)
    )


def poll_req(version: int = 0, long_poll_s: int = 0) -> pb.PollRequest:
    return pb.PollRequest(
        capability_version=wire.CAPABILITY_VERSION, map_version=version, long_poll_s=long_poll_s
    )


async def read_response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await asyncio.wait_for(r.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, body


async def test_polls_are_answered_by_the_lean_server_pipelined_and_in_pieces(ctl: Ctl) -> None:
    before = await ctl.metric(FAST_POLLS)
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        # Two polls in one write (pipelined): two answers, in order, on the same connection.
        w.write(
            poll_bytes(ctl.cert, poll_req())
            + poll_bytes(ctl.cert, poll_req(), extra=b"x-request-id: abc-1\r\n")
        )
        first = await read_response(r)
        second = await read_response(r)
        assert first[0] == 200 and second[0] == 200
        full = wire.decode(pb.PollResponse, first[2])
        assert full.map.self.node_id == ctl.node_id and not full.unchanged
        assert second[1]["x-request-id"] == "abc-1"
        # The node's version now: "unchanged", a byte at a time.
        data = poll_bytes(ctl.cert, poll_req(full.map_version))
        for i in range(len(data)):
            w.write(data[i : i + 1])
            await w.drain()
        status, headers, body = await read_response(r)
        assert status == 200 and headers["content-type"] == wire.CT_PROTO
        assert wire.decode(pb.PollResponse, body).unchanged
        # No web-stack headers: these answers did not go through it.
        assert "server" not in headers
    finally:
        w.close()
    assert await ctl.metric(FAST_POLLS) == before + 3


async def test_bad_polls_get_the_same_clear_errors(ctl: Ctl) -> None:
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        w.write(poll_bytes(ctl.cert, b"\xff\xff\xff"))
        status, headers, body = await read_response(r)
        assert status == 422 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "invalid"
        # Another CA's certificate (here: not a certificate at all) is refused; the connection lives on.
        w.write(poll_bytes(urllib.parse.quote("-----BEGIN CERTIFICATE-----\nAAAA\n").encode(), poll_req()))
        status, _, body = await read_response(r)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthenticated"
        w.write(poll_bytes(ctl.cert, pb.PollRequest()))  # no capability version: an unknown client
        status, _, body = await read_response(r)
        assert status == 412 and json.loads(body)["error"]["details"]["reason"] == "capability_version"
        w.write(poll_bytes(ctl.cert, poll_req()))
        assert (await read_response(r))[0] == 200
    finally:
        w.close()


async def test_other_requests_hand_the_connection_to_the_web_stack(ctl: Ctl) -> None:
    before = await ctl.metric("cvlan_proxy_handovers_total")
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        w.write(poll_bytes(ctl.cert, poll_req()))
        assert (await read_response(r))[0] == 200
        # A poll without the front's certificate header: refused, the connection lives on.
        w.write(b"POST /v1/poll HTTP/1.1\r\nhost: front\r\ncontent-length: 0\r\n\r\n")
        status, headers, body = await read_response(r)
        assert (
            status == 401 and "a node client certificate is required" in json.loads(body)["error"]["message"]
        )
        # Not the node API: the web stack answers, and keeps the connection, polls included.
        w.write(b"GET /healthz HTTP/1.1\r\nhost: front\r\n\r\n")
        status, headers, body = await read_response(r)
        assert status == 200 and json.loads(body)["status"] == "ok" and "server" in headers
        w.write(poll_bytes(ctl.cert, poll_req()))
        status, headers, body = await read_response(r)
        assert status == 200 and "server" in headers
        assert wire.decode(pb.PollResponse, body).map.self.node_id == ctl.node_id
    finally:
        w.close()
    assert await ctl.metric("cvlan_proxy_handovers_total") == before + 1
    # JSON polls (debugging) go the same way, answered in JSON.
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        body = json.dumps({"capability_version": wire.CAPABILITY_VERSION}).encode()
        w.write(
            b"POST /v1/poll HTTP/1.1\r\nhost: front\r\ncontent-type: application/json\r\n"
            b"accept: application/json\r\ncontent-length: %d\r\nx-client-cert: %s\r\n\r\n%s"
            % (len(body), ctl.cert, body)
        )
        status, headers, got = await read_response(r)
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert int(json.loads(got)["map"]["self"]["node_id"]) == ctl.node_id
    finally:
        w.close()


async def test_discovery_registration_and_reports_through_the_lean_server(ctl: Ctl) -> None:
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        w.write(b"GET /v1/discover HTTP/1.1\r\nhost: front\r\n\r\n")
        status, headers, body = await read_response(r)
        got = wire.decode(pb.DiscoverResponse, body)
        assert status == 200 and "server" not in headers
        assert got.ca_pem == ctl.conf.ca_pem and got.capability_version == wire.CAPABILITY_VERSION
        _, csr = tls.new_key_and_csr()
        reg = pb.RegisterRequest(
            capability_version=wire.CAPABILITY_VERSION,
            token=ctl.token,
            wg_public_key=os.urandom(32),
            csr_pem=csr,
            hostname="via-socket",
        ).SerializeToString()
        req = b"POST /v1/register HTTP/1.1\r\nhost: front\r\ncontent-type: application/x-protobuf\r\n"
        w.write(req + b"content-length: %d\r\n\r\n%s" % (len(reg), reg))
        status, headers, body = await read_response(r)
        assert status == 200, body
        joined = wire.decode(pb.RegisterResponse, body)
        assert joined.node_name.startswith("via-socket") and "BEGIN CERTIFICATE" in joined.certificate_pem
        # The same token's misuse is refused clearly: a bad WireGuard key.
        bad = pb.RegisterRequest(
            capability_version=wire.CAPABILITY_VERSION, token=ctl.token, wg_public_key=b"short", csr_pem=csr
        ).SerializeToString()
        w.write(req + b"content-length: %d\r\n\r\n%s" % (len(bad), bad))
        status, _, body = await read_response(r)
        assert status == 422 and json.loads(body)["error"]["code"] == "invalid"
        # A report with a denied flow, from the new node (its certificate as the front forwards it).
        flow = pb.DeniedFlow(src="100.64.0.9", dst="100.64.0.10", proto="tcp", dport=22, packets=3)
        rep = pb.ReportRequest(
            capability_version=wire.CAPABILITY_VERSION, denied_flows=[flow]
        ).SerializeToString()
        cert = urllib.parse.quote(joined.certificate_pem).encode()
        w.write(
            b"POST /v1/report HTTP/1.1\r\ncontent-type: application/x-protobuf\r\n"
            b"x-client-cert: %s\r\ncontent-length: %d\r\n\r\n%s" % (cert, len(rep), rep)
        )
        status, _, body = await read_response(r)
        assert status == 200 and wire.decode(pb.ReportResponse, body).accepted == 1
        # A renewal without a certificate is refused.
        w.write(b"POST /v1/renew HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 401 and json.loads(body)["error"]["details"]["reason"] == "no_certificate"
    finally:
        w.close()
    assert await ctl.metric('cvlan_proxy_fast_requests_total{route="/v1/register"}') == 2
    assert await ctl.metric('cvlan_proxy_fast_requests_total{route="/v1/report"}') == 1
    assert await ctl.metric("cvlan_proxy_handovers_total") == 0


async def test_long_poll_is_woken_by_a_change_and_connection_close_is_honoured(ctl: Ctl) -> None:
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        w.write(poll_bytes(ctl.cert, poll_req()))
        version = wire.decode(pb.PollResponse, (await read_response(r))[2]).map_version
        # Held: nothing changes within a second, and the answer says so.
        t0 = time.monotonic()
        w.write(poll_bytes(ctl.cert, poll_req(version, long_poll_s=1)))
        status, _, body = await read_response(r)
        assert status == 200 and wire.decode(pb.PollResponse, body).unchanged
        assert time.monotonic() - t0 >= 0.9
        # Held again; a second node joins the CVLAN: the poll returns the new map at once.
        w.write(poll_bytes(ctl.cert, poll_req(version, long_poll_s=30)))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        other = await ctl.register("n2")
        status, _, body = await read_response(r)
        got = wire.decode(pb.PollResponse, body)
        assert status == 200 and not got.unchanged and time.monotonic() - t0 < 10
        assert [p.node_id for p in got.map.peers] == [other]
        # Connection: close is answered, then the connection is closed.
        w.write(poll_bytes(ctl.cert, poll_req(got.map_version), extra=b"connection: close\r\n"))
        status, headers, _ = await read_response(r)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(r.read(), 10) == b""
    finally:
        w.close()


async def test_requests_pipelined_behind_a_long_poll_wait_their_turn(ctl: Ctl) -> None:
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        w.write(poll_bytes(ctl.cert, poll_req()))
        version = wire.decode(pb.PollResponse, (await read_response(r))[2]).map_version
        t0 = time.monotonic()
        w.write(
            poll_bytes(ctl.cert, poll_req(version, long_poll_s=1), extra=b"x-request-id: held\r\n")
            + poll_bytes(ctl.cert, poll_req(version), extra=b"x-request-id: behind\r\n")
        )
        first, second = await read_response(r), await read_response(r)
        assert first[1]["x-request-id"] == "held" and second[1]["x-request-id"] == "behind"
        assert time.monotonic() - t0 >= 0.9
        assert first[0] == second[0] == 200
        # After an answer with Connection: close nothing further on that connection is answered.
        w.write(
            poll_bytes(ctl.cert, poll_req(version), extra=b"connection: close\r\n")
            + poll_bytes(ctl.cert, poll_req(version))
        )
        assert (await read_response(r))[0] == 200
        assert await asyncio.wait_for(r.read(), 10) == b""
    finally:
        w.close()


async def test_polls_pipelined_beyond_the_buffer_limit_pause_reading_until_the_long_poll_is_answered(
    ctl: Ctl,
) -> None:
    """More than MAX_BUFFERED bytes of polls behind a held long-poll: the lean server stops reading
    (they back up to the front instead of growing its buffer) and, once the long-poll is answered,
    reads on and answers every one, in order. Were reading not resumed, the polls still unread would
    never be answered (read_response times out); were it not paused, nothing would back up here."""
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        w.write(poll_bytes(ctl.cert, poll_req()))
        version = wire.decode(pb.PollResponse, (await read_response(r))[2]).map_version
        w.write(poll_bytes(ctl.cert, poll_req(version, long_poll_s=30), extra=b"x-request-id: held\r\n"))
        await asyncio.sleep(0.3)  # held: what follows arrives while the connection waits
        # Twice what can leave this side before the pause holds it back: what the server buffers (up
        # to MAX_BUFFERED, plus the read that crosses it) and what the socket holds in between.
        sndbuf = w.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        total = 2 * (MAX_BUFFERED + READ_MAX + sndbuf)

        def behind(i: int) -> bytes:
            return poll_bytes(ctl.cert, poll_req(version), extra=b"x-request-id: behind-%04d\r\n" % i)

        polls = [behind(i) for i in range(total // len(behind(0)) + 1)]
        assert sum(map(len, polls)) > total > MAX_BUFFERED
        w.write(b"".join(polls))
        await asyncio.sleep(0.5)
        assert w.transport.get_write_buffer_size() > 0, "the server read on behind the held long-poll"
        # A second node joins: the long-poll is answered, then every poll behind it, in order.
        t0 = time.monotonic()
        other = await ctl.register("n2")
        status, headers, body = await read_response(r)
        got = wire.decode(pb.PollResponse, body)
        assert status == 200 and headers["x-request-id"] == "held" and time.monotonic() - t0 < 10
        assert [p.node_id for p in got.map.peers] == [other]
        for i in range(len(polls)):
            status, headers, body = await read_response(r)
            assert (status, headers["x-request-id"]) == (200, f"behind-{i:04d}"), body[:200]
        last = wire.decode(pb.PollResponse, body)
        assert last.map_version == got.map_version and [p.node_id for p in last.map.peers] == [other]
        assert w.transport.get_write_buffer_size() == 0
        # The connection goes on as before: the next poll is answered at once.
        w.write(poll_bytes(ctl.cert, poll_req(got.map_version)))
        status, _, body = await read_response(r)
        assert status == 200 and wire.decode(pb.PollResponse, body).unchanged
    finally:
        w.close()


async def test_stop_answers_held_long_polls_and_closes_idle_connections(ctl: Ctl) -> None:
    r1, w1 = await asyncio.open_unix_connection(str(ctl.sock))
    r2, w2 = await asyncio.open_unix_connection(str(ctl.sock))
    w1.write(poll_bytes(ctl.cert, poll_req()))
    version = wire.decode(pb.PollResponse, (await read_response(r1))[2]).map_version
    w1.write(poll_bytes(ctl.cert, poll_req(version, long_poll_s=60)))
    w2.write(poll_bytes(ctl.cert, poll_req()))
    await read_response(r2)  # w2 now idle between requests
    await asyncio.sleep(0.3)
    took = await asyncio.to_thread(_stop, ctl)
    assert took < 15, f"stopping took {took:.1f} s with a long-poll held"
    status, headers, body = await read_response(r1)
    assert status == 200 and wire.decode(pb.PollResponse, body).unchanged
    assert headers.get("connection") == "close"
    assert await asyncio.wait_for(r2.read(), 5) == b""
    w1.close()
    w2.close()


async def test_switched_off_the_web_stack_serves_polls(tmp_path: Path) -> None:
    ctl = await _up(tmp_path, ("CVLAN_CONTROLLER_PROXY_FAST_POLLS", "false"))
    try:
        r, w = await asyncio.open_unix_connection(str(ctl.sock))
        w.write(poll_bytes(ctl.cert, poll_req()))
        status, headers, body = await read_response(r)
        assert status == 200 and "server" in headers
        assert wire.decode(pb.PollResponse, body).map.self.node_id == ctl.node_id
        w.close()
        assert await ctl.metric(FAST_POLLS) == 0
    finally:
        _stop(ctl)


async def test_a_parking_fronts_poll_is_answered_at_once_and_its_stream_tells_the_wake(ctl: Ctl) -> None:
    # cvlan-front's side of the socket (docs/FRONT.md, "Long-polls"): its event stream, then a poll
    # that would wait, marked X-Cvlan-Park: answered "unchanged" at once with what it waits for.
    er, ew = await asyncio.open_unix_connection(str(ctl.sock))
    r, w = await asyncio.open_unix_connection(str(ctl.sock))
    try:
        ew.write(b"GET /v1/front/events HTTP/1.1\r\nhost: front\r\n\r\n")
        assert (await asyncio.wait_for(er.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(er.readline(), 10) == b"ready\n"
        w.write(poll_bytes(ctl.cert, poll_req()))
        version = wire.decode(pb.PollResponse, (await read_response(r))[2]).map_version
        w.write(poll_bytes(ctl.cert, poll_req(version, 30), extra=b"x-cvlan-park: 1\r\n"))
        status, headers, body = await read_response(r)  # within 10 s: not held for 30
        assert status == 200 and wire.decode(pb.PollResponse, body).unchanged
        cid, wakes, wait = (int(x) for x in headers["x-cvlan-parked"].split())
        assert wait == 30
        # A change to the CVLAN: one line on the stream, with a higher wake count.
        await ctl.register("n2")
        line = await asyncio.wait_for(er.readline(), 10)
        got_cid, got_wakes = (int(x) for x in line.split())
        assert got_cid == cid and got_wakes > wakes
        # Asked again, the poll gets the new map.
        w.write(poll_bytes(ctl.cert, poll_req(version, 30), extra=b"x-cvlan-park: 1\r\n"))
        status, headers, body = await read_response(r)
        assert not wire.decode(pb.PollResponse, body).unchanged and "x-cvlan-parked" not in headers
    finally:
        w.close()
        ew.close()
