"""The shared metrics listener: listen addresses, a refresh before each scrape, a taken port."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from cvlan.common.metrics import MetricsListener, MetricsListenError, offset, parse_listen


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9371") == ("127.0.0.1", 9371)
    assert parse_listen("[::1]:9371") == ("::1", 9371)
    assert parse_listen("off") is None and parse_listen("") is None
    for bad in ("9371", ":9371", "host:port", "127.0.0.1:70000"):
        with pytest.raises(MetricsListenError):
            parse_listen(bad)
    assert offset("127.0.0.1:9374", 3) == "127.0.0.1:9377"
    assert offset("[::1]:9374", 1) == "[::1]:9375"
    assert offset("off", 3) == "off"
    with pytest.raises(MetricsListenError):
        offset("127.0.0.1:65535", 1)


async def test_listener_refreshes_before_each_scrape_and_a_taken_port() -> None:
    reg = CollectorRegistry()
    scrapes = Counter("cvlan_test_scrapes", "refreshes", registry=reg)

    async def refresh() -> None:
        scrapes.inc()

    m = MetricsListener(reg, refresh)
    assert await m.start("127.0.0.1:0", required=True)
    try:
        async with aiohttp.ClientSession() as s:
            for n in (1, 2):
                async with s.get(f"http://127.0.0.1:{m.port}/metrics") as r:
                    assert r.status == 200
                    assert f"cvlan_test_scrapes_total {n}.0" in await r.text()
        taken = f"127.0.0.1:{m.port}"
        other = MetricsListener(CollectorRegistry())
        assert not await other.start(taken, required=False), "the default address: a warning"
        with pytest.raises(MetricsListenError, match="metrics listener"):
            await other.start(taken, required=True)
    finally:
        await m.close()
    with socket.socket() as s:  # closed: the port is free again
        s.bind(("127.0.0.1", m.port))
    await asyncio.sleep(0)
