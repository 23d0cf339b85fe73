"""Web UI page latency on a tenant with 10 CVLANs x 100 nodes (1,000 nodes).

Runs the controller in-process on 127.0.0.1 with TLS and SQLite (or --db URL), signs in like a
browser (form post, session cookie) and times sequential GETs of the main pages and of the JSON
call the live-status script makes. Client and server share one event loop and one core, so the
numbers are an upper bound of server time. Writes bench/results/ui-DATE/report.md.

    .venv/bin/python bench/ui/bench_ui_pages.py [--requests 40] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import machine, pct
from cvlan.controller.auth import SYSTEM
from cvlan.controller.ops import cvlans, tenants, users
from cvlan.devtools.harness.enrol import create_node
from cvlan.devtools.harness.inprocess import RunningController

PASSWORD = "bench-password-123"
PAGES = {
    "overview": "/ui/t/acme/",
    "CVLAN (100 members)": "/ui/t/acme/cvlans/cv0",
    "nodes (1,000)": "/ui/t/acme/nodes",
    "live JSON, one CVLAN": "/api/v1/tenants/1/nodes?limit=1000&cvlan=1",
    "live JSON, all nodes": "/api/v1/tenants/1/nodes?limit=1000",
    "audit log (page 1)": "/ui/t/acme/audit",
}


async def provision(c: object, n_cvlans: int, per: int) -> None:
    ctx = c.ctx  # type: ignore[attr-defined]
    async with ctx.tx() as s:
        t = await tenants.create(ctx, s, SYSTEM, "acme")
        await users.create_user(ctx, s, SYSTEM, t, "admin@acme.example", "admin", PASSWORD)
    for i in range(n_cvlans):
        async with ctx.tx() as s:
            t = (await tenants.list_(s, SYSTEM, 1, 0))[0][0]
            await cvlans.create(ctx, s, SYSTEM, t, f"cv{i}", None, "mesh")
            _, _, text = await cvlans.create_token(
                ctx, s, SYSTEM, t, f"cv{i}", reusable=True, max_uses=None, expires_in=None, tags=[]
            )
        async with ctx.tx() as s:
            for j in range(per):
                n = await create_node(ctx, s, text, f"n{i}-{j}")
                n.last_seen = ctx.now() - dt.timedelta(seconds=j % 200)
                n.endpoints = [f"198.51.100.{j % 250}:51820"]


async def sign_in(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url + "/ui/signin") as r:
        m = re.search(r'name="_csrf" value="([^"]+)"', await r.text())
    assert m is not None
    form = {"_csrf": m.group(1), "email": "admin@acme.example", "password": PASSWORD, "next": "/ui/"}
    async with http.post(url + "/ui/signin", data=form) as r:
        assert r.status == 200, r.status


async def run(n_requests: int, db: str | None) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="cvlan-bench-ui-"))
    rc = await RunningController(tmp, db or "", metrics_listen="").start()
    assert rc.c is not None
    t0 = time.perf_counter()
    await provision(rc.c, 10, 100)
    provision_s = time.perf_counter() - t0
    ctx = rc.client_ssl()
    url = rc.url
    rows = []
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as http:
            await sign_in(http, url)
            for name, path in PAGES.items():
                times, size = [], 0
                for _ in range(n_requests):
                    t = time.perf_counter()
                    async with http.get(url + path) as r:
                        body = await r.read()
                        assert r.status == 200, (path, r.status)
                    times.append((time.perf_counter() - t) * 1000)
                    size = len(body)
                rows.append(
                    f"| {name} | `{path}` | {pct(times, 50):.1f} | {pct(times, 95):.1f} | {size / 1024:.0f} |"
                )
    finally:
        await rc.stop()
    backend = "PostgreSQL" if rc.settings.db_url.startswith("postgresql") else "SQLite"
    return "\n".join(
        [
            f"# Web UI page latency ({dt.date.today().isoformat()})",
            "",
            f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}. Database: {backend}.",
            f"Tenant with 10 CVLANs x 100 nodes, provisioned in {provision_s:.1f} s. "
            f"{n_requests} sequential requests per page over TLS with a session cookie; client and "
            "server in one process.",
            "",
            "| page | path | p50 ms | p95 ms | size KiB |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Command: `.venv/bin/python -m bench.ui.bench_ui_pages`",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    args = ap.parse_args()
    report = asyncio.run(run(args.requests, args.db))
    out = Path(__file__).resolve().parents[1] / "results" / f"ui-{dt.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
