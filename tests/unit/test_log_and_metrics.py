"""Log lines (timestamps, the fixed field vocabulary in every daemon) and the shared metrics listener."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
import socket
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from cvlan.common.log import FIELDS, JsonFormatter, TextFormatter
from cvlan.common.metrics import MetricsListener, MetricsListenError, offset, parse_listen

SRC = Path(__file__).resolve().parents[2] / "src" / "cvlan"
DOC = Path(__file__).resolve().parents[2] / "docs" / "LOGGING.md"


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("cvlan.test", logging.INFO, __file__, 1, "peer path changed", None, None)
    r.created = 1796530631.0425  # 2026-12-06T04:17:11.042Z
    r.__dict__.update(extra)
    return r


def test_text_lines_carry_a_full_utc_timestamp_with_milliseconds() -> None:
    line = TextFormatter().format(record(tenant_id=3, cvlan=7, peer="ab12cd34"))
    want = "2026-12-06T04:17:11.042Z I cvlan.test: peer path changed tenant_id=3 cvlan=7 peer=ab12cd34"
    assert line == want


def test_json_lines_carry_the_cvlan_field() -> None:
    out = json.loads(JsonFormatter().format(record(cvlan=7, listen="x")))
    assert out["cvlan"] == 7
    assert "listen" not in out, "fields outside the vocabulary are not logged"


def _extra_keys(tree: ast.AST) -> list[tuple[int, str]]:
    keys: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "extra" and isinstance(kw.value, ast.Dict):
                    for k in kw.value.keys:
                        if isinstance(k, ast.Constant) and isinstance(k.value, str):
                            keys.append((node.lineno, k.value))
    return keys


def test_every_daemon_logs_only_fields_of_the_vocabulary() -> None:
    """A field outside FIELDS is dropped by both formatters: a divergent name loses the value."""
    wrong = [
        f"{path.relative_to(SRC)}:{line}: {key}"
        for path in sorted(SRC.rglob("*.py"))
        for line, key in _extra_keys(ast.parse(path.read_text()))
        if key not in FIELDS
    ]
    assert not wrong, f"log fields outside common/log.py FIELDS: {wrong}"


def test_logging_doc_lists_every_field() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", DOC.read_text()))
    assert set(FIELDS) <= documented, f"not in docs/LOGGING.md: {sorted(set(FIELDS) - documented)}"


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
