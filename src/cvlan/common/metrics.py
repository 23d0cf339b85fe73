"""The metrics listener every daemon shares: Prometheus text format on GET /metrics, from a registry
of the daemon's own, on a `--metrics-listen HOST:PORT` (see docs/METRICS.md).

A daemon whose gauges are derived from state it holds (cvland's peers, the vrouter's peers) passes a
`refresh` coroutine: it runs once per scrape, before the registry is rendered, so a scrape costs what
one status call costs and nothing runs between scrapes."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

OFF = ("", "off", "none")
"""Values of --metrics-listen that turn the listener off."""

Refresh = Callable[[], Awaitable[None]]


class MetricsListenError(Exception):
    """The metrics listener could not be started (bad HOST:PORT, or the port is taken)."""


def parse_listen(text: str) -> tuple[str, int] | None:
    """HOST:PORT (IPv6 in brackets) -> (host, port); "off", "none" or "" -> None. Port 0 picks a free one."""
    if text.strip().lower() in OFF:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise MetricsListenError(f"metrics listen address must be HOST:PORT or off, not {text!r}")
    return host.strip("[]"), int(port)


def offset(text: str, n: int) -> str:
    """HOST:PORT with the port moved up by n (one port per worker process); "off" stays off."""
    hp = parse_listen(text)
    if hp is None or n == 0:
        return text
    host, port = hp
    if port == 0:
        return text
    if port + n > 65535:
        raise MetricsListenError(f"metrics port {port}+{n} is past 65535")
    return f"[{host}]:{port + n}" if ":" in host else f"{host}:{port + n}"


def render(registry: CollectorRegistry) -> web.Response:
    resp = web.Response(body=generate_latest(registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


class MetricsListener:
    """A small aiohttp server of its own: /metrics never shares a port or a middleware stack with an
    API, so it can stay on loopback while the API listens on the world."""

    def __init__(self, registry: CollectorRegistry, refresh: Refresh | None = None) -> None:
        self.registry = registry
        self.refresh = refresh
        self.port = 0
        """The bound port (useful with port 0) once started; 0 while off."""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        if self.refresh is not None:
            try:
                await self.refresh()
            except Exception as e:  # a failed refresh leaves the last values; the scrape still answers
                log.warning("metrics refresh failed", extra={"reason": f"{type(e).__name__}: {e}"})
        return render(self.registry)

    async def start(self, listen: str, *, required: bool) -> bool:
        """Listen on `listen`. True if listening. If the port is taken and not `required` (the
        default address, not one the operator chose), log a warning and run without metrics: a
        second instance on one host must not fail for its metrics."""
        hp = parse_listen(listen)
        if hp is None:
            return False
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, hp[0], hp[1], reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            if required or e.errno != errno.EADDRINUSE:
                raise MetricsListenError(f"metrics listener {listen}: {e.strerror or e}") from e
            log.warning("metrics listener not started: port in use", extra={"endpoint": listen})
            return False
        self._runner = runner
        self.port = int(runner.addresses[0][1]) if runner.addresses else hp[1]
        log.info("serving metrics", extra={"endpoint": f"{hp[0]}:{self.port}"})
        return True

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
