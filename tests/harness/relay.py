"""In-process relays registered with a real controller, and nodes holding real controller-issued
certificates, for relay tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cvlan.client.relay import RelayClient, ws_url
from cvlan.common.clock import FakeClock
from cvlan.devtools.harness.controller import free_port
from cvlan.devtools.harness.enrol import EnrolledNode, make_token, register
from cvlan.devtools.harness.inprocess import RunningController
from cvlan.relay.__main__ import serve
from cvlan.relay.settings import RelaySettings
from cvlan.wire import relayproto as rp


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def enrol_at(rc: RunningController, token: str, name: str, when: dt.datetime) -> EnrolledNode:
    """Register a node through the node API while the controller's clock reads `when`: its
    certificate is issued then (an expired one, for a time long enough ago)."""
    assert rc.c is not None
    ctx = rc.c.ctx
    real = ctx.clock
    ctx.clock = FakeClock(when)
    try:
        return await register(rc.url, rc.c.ca.cert_pem.decode(), token, name)
    finally:
        ctx.clock = real


@dataclass
class Fleet:
    """A tenant with CVLANs and reusable enrollment tokens, created through the management API."""

    rc: RunningController
    tenant: str
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def create(cls, rc: RunningController, tenant: str, cvlan_names: list[str]) -> Fleet:
        api = rc.api()
        f = cls(rc, tenant)
        for cv in cvlan_names:
            f.tokens[cv] = str((await make_token(api.call, tenant, cv, reusable=True))["token"])
        return f

    async def node(self, cvlan: str, name: str) -> EnrolledNode:
        assert self.rc.c is not None
        return await register(self.rc.url, self.rc.c.ca.cert_pem.decode(), self.tokens[cvlan], name)


class RunningRelay:
    """cvlan-relay's serve() in this event loop, bootstrapped with the printed token and CA pin."""

    def __init__(self, rc: RunningController, state_dir: Path, name: str = "r1", region: str = "eu") -> None:
        self.rc = rc
        self.state_dir = state_dir
        self.name = name
        self.region = region
        self.port = free_port()
        self.stun_port = free_udp_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.command = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[int] | None = None
        self.settings: RelaySettings | None = None

    async def create(self) -> RunningRelay:
        api = self.rc.api()
        regions = (await api.get("/api/v1/regions")).ok()["items"]
        if self.region not in [r["name"] for r in regions]:
            (await api.post("/api/v1/regions", {"name": self.region})).ok()
        out = (
            await api.post(
                "/api/v1/relays",
                {
                    "name": self.name,
                    "region": self.region,
                    "url": self.url,
                    "stun": f"127.0.0.1:{self.stun_port}",
                },
            )
        ).ok()
        self.command = out["command"]
        token = re.search(r"--token (\S+)", self.command)
        pin = re.search(r"--ca-pin (\S+)", self.command)
        assert token and pin, self.command
        self.settings = RelaySettings(
            server=self.rc.url,
            token=token.group(1),
            ca_pin=pin.group(1),
            listen=f"127.0.0.1:{self.port}",
            stun_listen=f"127.0.0.1:{self.stun_port}",
            state_dir=self.state_dir,
            keepalive_s=5,
            revalidate_s=1.0,
        )
        return self

    async def start(self, **overrides: object) -> RunningRelay:
        assert self.settings is not None
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(settings, self._stop))
        try:
            await self.wait_listening()
        except BaseException:
            self._stop.set()
            task, self._task = self._task, None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            raise
        return self

    async def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()  # raises the bootstrap error, if any
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 10)
            self._task = None

    def anon_ssl(self) -> ssl.SSLContext:
        """TLS that trusts the controller CA but presents no client certificate."""
        assert self.rc.c is not None
        return ssl.create_default_context(cadata=self.rc.c.ca.cert_pem.decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; counters without their _total suffix stripped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def metrics(r: RunningRelay) -> dict[str, float]:
    """The relay's /metrics, parsed."""
    async with aiohttp.ClientSession() as s, s.get(r.url + "/metrics", ssl=r.anon_ssl()) as resp:
        assert resp.status == 200
        return parse_metrics(await resp.text())


async def ws_status(r: RunningRelay, ctx: ssl.SSLContext) -> int | str:
    """What the relay answers a WebSocket upgrade with this TLS: 101, an HTTP status or the error."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(r.url), ssl=ctx, timeout=aiohttp.ClientWSTimeout(ws_close=2)),
        ):
            return 101
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    except aiohttp.ClientError as e:
        return type(e).__name__


class Inbox:
    """Packets a RelayClient delivered, as (source key, packet)."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []
        self.event = asyncio.Event()

    def __call__(self, src: bytes, packet: bytes) -> None:
        self.items.append((src, packet))
        self.event.set()

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                self.event.clear()
                await self.event.wait()


async def connect(r: RunningRelay, node: EnrolledNode, **kw: Any) -> tuple[RelayClient, Inbox]:
    """A node's RelayClient, connected (5 s at most)."""
    inbox = Inbox()
    c = RelayClient(r.url, node.ssl(), inbox, **kw).start()
    await asyncio.wait_for(c.connected.wait(), 5)
    return c, inbox


async def until_closed(client: RelayClient, timeout: float) -> None:
    """Wait until the relay has closed the client's connection."""
    async with asyncio.timeout(timeout):
        while client.connected.is_set():
            await asyncio.sleep(0.05)


@dataclass
class Flooded:
    received: list[int]
    """Sequence numbers of the frames the receiver read, in order."""
    dropped: float
    """The relay's queue_head drops."""


async def flood(r: RunningRelay, a: EnrolledNode, b: EnrolledNode, n: int, size: int, every: int) -> Flooded:
    """a sends n numbered frames of `size` bytes to b, whose WebSocket reads nothing until the relay
    has forwarded them all (its TCP window closes and the relay's queue for b overflows); then b reads
    up to the last one. a yields to the event loop every `every` frames."""
    ca, _ = await connect(r, a, queue_len=1_000_000, queue_bytes=1 << 30)
    try:
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(r.url), ssl=b.ssl()) as wsb:
            for i in range(n):
                ca.send(b.wg_key, i.to_bytes(4, "big") + bytes(size))
                if i % every == 0:
                    await asyncio.sleep(0)
            async with asyncio.timeout(60):
                while (await metrics(r)).get('cvlan_relay_frames_total{direction="forwarded"}', 0) < n:
                    await asyncio.sleep(0.1)
            received: list[int] = []
            async with asyncio.timeout(30):
                while not received or received[-1] != n - 1:
                    f = rp.parse_frame((await wsb.receive()).data)
                    if isinstance(f, rp.RecvPacket):
                        received.append(int.from_bytes(f.packet[:4], "big"))
    finally:
        await ca.close()
    return Flooded(received, (await metrics(r))['cvlan_relay_drops_total{reason="queue_head"}'])


class Relays:
    """One test's relays and nodes on one controller: relays started on demand and stopped at the end,
    nodes of tenant acme enrolled through the node API."""

    def __init__(self, rc: RunningController, tmp: Path) -> None:
        self.rc = rc
        self.tmp = tmp
        self._started: list[RunningRelay] = []
        self._fleets: dict[str, Fleet] = {}

    async def relay(self, **settings: object) -> RunningRelay:
        """A relay registered and started (settings override its defaults); stopped at teardown."""
        name = f"r{len(self._started) + 1}"
        r = await RunningRelay(self.rc, self.tmp / f"relay-{name}", name=name).create()
        self._started.append(r)
        return await r.start(**settings)

    async def nodes(self, *names: str, cvlan: str = "office", tenant: str = "acme") -> list[EnrolledNode]:
        fleet = self._fleets.get(tenant)
        if fleet is None:
            fleet = self._fleets[tenant] = await Fleet.create(self.rc, tenant, [])
        if cvlan not in fleet.tokens:
            tok = await make_token(self.rc.api().call, tenant, cvlan, reusable=True)
            fleet.tokens[cvlan] = str(tok["token"])
        return [await fleet.node(cvlan, name) for name in names]

    async def close(self) -> None:
        for r in self._started:
            await r.stop()
