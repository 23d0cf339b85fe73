"""A controller inside the caller's event loop on a free loopback port, with TLS, and a JSON client of
the management API. The integration and UI tests, and the benchmarks that need the controller's
internals, start it with this."""

from __future__ import annotations

import json as _json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from cvlan.common.clock import Clock
from cvlan.controller.app import Controller, bootstrap_admin, build, metrics_app, server_ssl
from cvlan.controller.settings import ControllerSettings
from cvlan.devtools.harness.controller import free_port

__all__ = ["Api", "ApiResult", "RunningController"]


@dataclass
class ApiResult:
    status: int
    body: Any
    headers: CIMultiDict[str]

    def ok(self) -> Any:
        assert 200 <= self.status < 300, f"{self.status}: {self.body}"
        return self.body


class Api:
    """A JSON client of the management API with a bearer token."""

    def __init__(self, url: str, token: str | None, ssl_ctx: ssl.SSLContext) -> None:
        self.url = url
        self.token = token
        self._ssl = ssl_ctx
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx))

    def as_token(self, token: str | None) -> Api:
        return Api(self.url, token, self._ssl)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiResult:
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        kw: dict[str, Any] = {"headers": h}
        if raw is not None:
            kw["data"] = raw
        elif json is not None:
            kw["json"] = json
        async with self._session.request(method, self.url + path, **kw) as r:
            text = await r.text()
            try:
                body: Any = _json.loads(text) if text else None
            except ValueError:
                body = text
            return ApiResult(r.status, body, CIMultiDict(r.headers))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON body): the shape cvlan.devtools.harness.enrol drives."""
        r = await self.request(method, path, json=body)
        return r.status, r.body

    async def get(self, path: str) -> ApiResult:
        return await self.request("GET", path)

    async def post(self, path: str, json: Any = None) -> ApiResult:
        return await self.request("POST", path, json=json if json is not None else {})

    async def patch(self, path: str, json: Any) -> ApiResult:
        return await self.request("PATCH", path, json=json)

    async def delete(self, path: str) -> ApiResult:
        return await self.request("DELETE", path)

    async def close(self) -> None:
        await self._session.close()


class RunningController:
    """A controller serving HTTPS on 127.0.0.1:<free port> inside the test's event loop."""

    def __init__(self, data_dir: Path, db_url: str, clock: Clock | None = None, **overrides: Any) -> None:
        self.port = overrides.pop("port", None) or free_port()
        overrides.setdefault("metrics_listen", "127.0.0.1:0")  # any free port: see metrics_url
        self.settings = ControllerSettings(
            data_dir=data_dir, db=db_url, listen=f"127.0.0.1:{self.port}", **overrides
        )
        self.clock = clock
        self.c: Controller | None = None
        self._runner: web.AppRunner | None = None
        self._metrics: web.AppRunner | None = None
        self.admin_token = ""
        self._apis: list[Api] = []

    @property
    def url(self) -> str:
        return self.settings.url

    async def start(self) -> RunningController:
        self.c = await build(self.settings, self.clock)
        conf = await bootstrap_admin(self.c)
        if conf is not None:
            for line in conf.read_text().splitlines():
                if line.startswith("token = "):
                    self.admin_token = line.split(" = ", 1)[1]
        self._runner = web.AppRunner(self.c.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            "127.0.0.1",
            self.port,
            ssl_context=server_ssl(self.c) if self.settings.tls else None,
        )
        await site.start()
        if self.settings.metrics_host_port is not None:
            self._metrics = web.AppRunner(metrics_app(self.c), access_log=None)
            await self._metrics.setup()
            await web.TCPSite(self._metrics, *self.settings.metrics_host_port).start()
        return self

    @property
    def metrics_url(self) -> str:
        """The plain-HTTP Prometheus endpoint (the controller's metrics listener)."""
        assert self._metrics is not None, "the metrics listener is off (metrics_listen empty)"
        host, port = self._metrics.addresses[0][:2]
        return f"http://{host}:{port}/metrics"

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.metrics_url) as r:
            assert r.status == 200, r.status
            return await r.text()

    def client_ssl(self) -> ssl.SSLContext:
        assert self.c is not None
        ctx = ssl.create_default_context(cadata=self.c.ca.cert_pem.decode())
        return ctx

    def api(self, token: str | None = None) -> Api:
        a = Api(self.url, token if token is not None else self.admin_token, self.client_ssl())
        self._apis.append(a)
        return a

    async def stop(self) -> None:
        for a in self._apis:
            await a.close()
        if self._metrics is not None:
            await self._metrics.cleanup()
            self._metrics = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
