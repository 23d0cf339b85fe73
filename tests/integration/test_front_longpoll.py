"""Long-polls through cvlan-front in front of a real controller: more nodes wait than the front has
connections to the controller, yet a change reaches each of them and an unrelated request is answered
while they wait; clients that read nothing hold nobody up (docs/FRONT.md, "Long-polls")."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from cvlan.client.controller import NodeApiClient
from cvlan.common import adminconf
from cvlan.devtools.harness.controller import stop_process
from cvlan.devtools.harness.enrol import EnrolledNode, register
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb
from tests.harness import proxysocket
from tests.harness.controller import free_port

pytestmark = pytest.mark.timeout(150)
NODES = 12
"""Waiting nodes: six times the front's two connections to the controller."""
LONG_POLL_S = 50
"""Longer than any wait in these tests: a long-poll that ends ends because of a change."""


@dataclass
class Stack:
    conf: adminconf.AdminConf
    token: str
    url: str
    """The front's."""
    data: Path
    procs: list[subprocess.Popen[bytes]]
    """The controller's, then the front's (stopped in reverse)."""
    metrics_url: str
    """The controller's metrics listener."""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    data, sock, mport = tmp_path / "ctl", tmp_path / "ctl.sock", free_port()
    procs = [proxysocket.serve(data, sock, metrics_port=mport)]
    try:
        conf = await proxysocket.wait_ready(procs[0], data, sock)
        token, _ = await proxysocket.enrol(conf, "n0")
        front, port = await proxysocket.front(tmp_path, data, [sock])
        procs.append(front)
        yield Stack(
            conf, token, f"https://127.0.0.1:{port}", data, procs, f"http://127.0.0.1:{mport}/metrics"
        )
    finally:
        for p in reversed(procs):
            stop_process(p)


async def _node(st: Stack, name: str) -> EnrolledNode:
    """Register through the front (no certificate yet); its client, too, speaks through the front."""
    return await register(st.url, st.conf.ca_pem, st.token, name)


async def _poll(n: EnrolledNode, version: int, long_poll_s: int = 0) -> pb.PollResponse:
    return await n.client.poll(version, [], pb.HealthSummary(), "", long_poll_s=long_poll_s)


async def _fast_polls(st: Stack) -> float:
    """Polls the controller answered (the parked ones included: it answers them at once)."""
    async with aiohttp.ClientSession() as s, s.get(st.metrics_url) as r:
        for line in (await r.text()).splitlines():
            if line.startswith('cvlan_proxy_fast_requests_total{route="/v1/poll"} '):
                return float(line.split()[1])
    return 0.0


async def _until(cond: object, what: str) -> None:
    for _ in range(300):
        if await cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within 30 s: {what}")


def _silent(st: Stack, n: EnrolledNode, request: bytes) -> socket.socket:
    """A node connection that sends `request` and never reads an answer (a small receive buffer)."""
    d = st.data.parent / f"silent-{n.node_id}"
    d.mkdir()
    (d / "node.pem").write_text(n.cert_pem + n.key_pem)
    ctx = ssl.create_default_context(cadata=st.conf.ca_pem)
    ctx.check_hostname = False
    ctx.load_cert_chain(str(d / "node.pem"))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", int(st.url.rsplit(":", 1)[1])))
    s = ctx.wrap_socket(raw)
    s.sendall(request)
    return s


def _raw_poll(version: int, long_poll_s: int) -> bytes:
    body = pb.PollRequest(
        capability_version=wire.CAPABILITY_VERSION, map_version=version, long_poll_s=long_poll_s
    ).SerializeToString()
    return (
        b"POST /v1/poll HTTP/1.1\r\nhost: c\r\ncontent-type: application/x-protobuf\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


@contextlib.contextmanager
def _closing(socks: list[socket.socket]) -> Iterator[None]:
    try:
        yield
    finally:
        for s in socks:
            s.close()


async def test_a_change_reaches_every_waiting_node_and_nobody_waits_behind_them(stack: Stack) -> None:
    everyone = [await _node(stack, f"w{i}") for i in range(NODES + 2)]
    try:
        nodes, (quiet, flooder) = everyone[:NODES], everyone[NODES:]
        version = (await _poll(nodes[0], 0)).map_version
        for n in nodes:
            assert (await _poll(n, 0)).map_version == version  # every member holds the current map
        before = await _fast_polls(stack)
        # Two clients that read nothing: one waits in a long-poll; the other pipelines 300 discovers
        # whose answers (about 1 MB) it never takes.
        silent = [
            _silent(stack, quiet, _raw_poll(version, LONG_POLL_S)),
            _silent(stack, flooder, b"GET /v1/discover HTTP/1.1\r\nhost: c\r\n\r\n" * 300),
        ]
        with _closing(silent):
            waiting = [asyncio.create_task(_poll(n, version, LONG_POLL_S)) for n in nodes]

            async def all_asked() -> bool:
                return await _fast_polls(stack) >= before + NODES + 1

            # The controller has answered all of them, and none is answered to its node: they wait
            # at the front, six times as many as it has connections to the controller.
            await _until(all_asked, "every long-poll reached the controller")
            assert not any(t.done() for t in waiting)
            # An unrelated request is answered while they wait.
            anon = NodeApiClient(stack.url, stack.conf.ca_pem)
            try:
                d = await asyncio.wait_for(anon.discover(), 20)
            finally:
                await anon.close()
            assert d.max_long_poll_s == 60
            assert not any(t.done() for t in waiting)
            # A change (a node joins, through the front too) reaches every waiting member.
            joiner = await asyncio.wait_for(_node(stack, "joiner"), 20)
            try:
                answers = await asyncio.wait_for(asyncio.gather(*waiting), 30)
            finally:
                await joiner.client.close()
        for n, r in zip(nodes, answers, strict=True):
            assert not r.unchanged and r.map_version != version
            assert r.map.self.node_id == n.node_id
            assert joiner.node_id in {p.node_id for p in r.map.peers}
        # A wait that ends without a change is answered "unchanged" with the node's version.
        new = answers[0].map_version
        r = await asyncio.wait_for(_poll(nodes[0], new, 1), 20)
        assert r.unchanged and r.map_version == new
    finally:
        for n in everyone:
            await n.client.close()


async def test_parked_polls_get_current_answers_after_the_controller_restarts(stack: Stack) -> None:
    # The front's event stream ends with the controller; what it parked stays parked, and is asked
    # again when the stream is back: the restarted controller's maps have new versions.
    nodes = [await _node(stack, f"r{i}") for i in range(3)]
    try:
        version = (await _poll(nodes[-1], 0)).map_version
        for n in nodes:
            assert (await _poll(n, 0)).map_version == version
        before = await _fast_polls(stack)
        waiting = [asyncio.create_task(_poll(n, version, LONG_POLL_S)) for n in nodes]

        async def all_asked() -> bool:
            return await _fast_polls(stack) >= before + len(nodes)

        await _until(all_asked, "every long-poll reached the controller")
        ctl = stack.procs[0]
        ctl.send_signal(signal.SIGTERM)
        assert ctl.wait(30) == 0
        assert not any(t.done() for t in waiting)
        stack.procs[0] = proxysocket.serve(stack.data, stack.data.parent / "ctl.sock")
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 40)  # before the 50 s waits end
        for n, r in zip(nodes, answers, strict=True):
            assert not r.unchanged and r.map_version != version and r.map.self.node_id == n.node_id
    finally:
        for n in nodes:
            await n.client.close()
