"""Management API benchmark: create T tenants x C CVLANs x 1 enrollment token through the API,
on SQLite and on PostgreSQL, in one run. Prints the figures and writes a markdown report with a graph.

    .venv/bin/python bench/mgmt/bench_mgmt_api.py [--tenants 100] [--cvlans 100] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ControllerProc, machine, pct, start_controller  # noqa: E402
from cvlan.devtools.pgcluster import PgCluster  # noqa: E402


async def drive(c: ControllerProc, tenants: int, cvlans: int, conc: int) -> dict[str, object]:
    lat: dict[str, list[float]] = {"tenant": [], "cvlan": [], "token": []}
    timeline: list[tuple[float, int]] = []
    errors = 0
    done = 0
    headers = {"Authorization": f"Bearer {c.token}"}
    conn = aiohttp.TCPConnector(ssl=c.ssl(), limit=conc)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:
        t0 = time.perf_counter()

        async def call(kind: str, path: str, body: dict[str, object]) -> None:
            nonlocal errors, done
            a = time.perf_counter()
            async with s.post(c.url + path, json=body) as r:
                await r.read()
                if r.status != 201:
                    errors += 1
            lat[kind].append(time.perf_counter() - a)
            done += 1
            if done % 500 == 0:
                timeline.append((time.perf_counter() - t0, done))

        sem = asyncio.Semaphore(conc)

        async def tenant(i: int) -> None:
            name = f"bt{i:03d}"
            async with sem:
                await call("tenant", "/api/v1/tenants", {"name": name})

            async def one(j: int) -> None:
                async with sem:
                    await call("cvlan", f"/api/v1/tenants/{name}/cvlans", {"name": f"c{j:03d}"})
                async with sem:
                    await call("token", f"/api/v1/tenants/{name}/tokens", {"cvlan": f"c{j:03d}"})

            await asyncio.gather(*(one(j) for j in range(cvlans)))

        await asyncio.gather(*(tenant(i) for i in range(tenants)))
        wall = time.perf_counter() - t0
    cpu, rss = c.cpu_rss()
    load = os.getloadavg()[0]
    total = sum(len(v) for v in lat.values())
    return {
        "wall_s": wall,
        "requests": total,
        "rps": total / wall,
        "errors": errors,
        "ctrl_cpu_s": cpu,
        "ctrl_rss_mb": rss,
        "load": load,
        "timeline": timeline,
        **{f"{k}_p50_ms": pct(v, 50) * 1000 for k, v in lat.items()},
        **{f"{k}_p99_ms": pct(v, 99) * 1000 for k, v in lat.items()},
    }


def run_backend(name: str, tenants: int, cvlans: int, conc: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="cvlan-bench-") as d:
        cluster = None
        db = ""
        if name == "postgresql":
            cluster = PgCluster().start()
            db = cluster.create_db("bench")
        c = start_controller(Path(d) / "data", db)
        try:
            return asyncio.run(drive(c, tenants, cvlans, conc))
        finally:
            c.stop()
            if cluster:
                cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--cvlans", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    results = {}
    for backend in ("sqlite", "postgresql"):
        print(f"== {backend}: {a.tenants} tenants x {a.cvlans} CVLANs x 1 token", flush=True)
        r = run_backend(backend, a.tenants, a.cvlans, a.concurrency)
        results[backend] = r
        print(
            f"   {r['requests']} requests in {r['wall_s']:.1f} s = {r['rps']:.0f} req/s, errors {r['errors']}, "
            f"controller CPU {r['ctrl_cpu_s']:.1f} s, RSS {r['ctrl_rss_mb']:.0f} MB",
            flush=True,
        )
    out = a.out or Path(__file__).resolve().parents[1] / "results" / f"mgmt-api-{dt.date.today()}"
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, a, results)
    print(f"report: {out / 'report.md'}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


def write_report(out: Path, a: argparse.Namespace, results: dict[str, dict[str, object]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, r in results.items():
        tl = r["timeline"]
        assert isinstance(tl, list)
        ax.plot([t for t, _ in tl], [n for _, n in tl], label=name)
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests completed")
    ax.set_title("Management API: tenants + CVLANs + tokens created")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "progress.png", dpi=100)
    s, p = results["sqlite"], results["postgresql"]
    rows = "\n".join(
        f"| {n} | {r['requests']} | {r['wall_s']:.1f} | {r['rps']:.0f} | {r['errors']} | "
        f"{r['cvlan_p50_ms']:.1f} / {r['cvlan_p99_ms']:.1f} | {r['token_p50_ms']:.1f} / {r['token_p99_ms']:.1f} | "
        f"{r['ctrl_cpu_s']:.0f} | {r['ctrl_rss_mb']:.0f} | {r['load']:.1f} |"
        for n, r in results.items()
    )
    ratio = float(str(p["rps"])) / float(str(s["rps"]))
    (out / "report.md").write_text(f"""# Management API benchmark ({dt.date.today()})

Creates {a.tenants} tenants x {a.cvlans} CVLANs x 1 enrollment token each through the REST API
(`{a.concurrency}` concurrent HTTPS requests, one aiohttp client), against a controller subprocess with TLS,
once on SQLite (embedded default) and once on an ephemeral PostgreSQL cluster, side by side in one run.

Machine: {machine()}. The machine is shared and noisy; compare the two rows, not absolute numbers across runs.

| backend | requests | wall s | req/s | errors | CVLAN create p50 / p99 ms | token create p50 / p99 ms | controller CPU s | controller RSS MB | load avg (1 min) at end |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

PostgreSQL / SQLite throughput ratio: **{ratio:.2f}**.

Every request is a full write transaction with its audit record (CVLAN creation also allocates a subnet from
the pool). ![progress](progress.png)

Reproduce: `.venv/bin/python bench/mgmt/bench_mgmt_api.py --tenants {a.tenants} --cvlans {a.cvlans}`
""")


if __name__ == "__main__":
    sys.exit(main())
