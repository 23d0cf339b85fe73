"""In-process relays registered with a real controller, and nodes holding real controller-issued
certificates, for relay tests and benchmarks."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cvlan.common.clock import FakeClock
from cvlan.devtools.harness.controller import free_port
from cvlan.devtools.harness.enrol import EnrolledNode, make_token, register
from cvlan.devtools.harness.inprocess import RunningController
from cvlan.relay.__main__ import serve
from cvlan.relay.settings import RelaySettings


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
        await self.wait_listening()
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
