"""Node API benchmark: controller pinned to CPU 1, this load generator pinned to CPU 0.

1. registrations/s: N nodes register through POST /v1/register (TLS, token + CSR), C at a time;
2. polls/s at fixed rates (open loop, latency from the scheduled send time) over >= 1,000
   keep-alive mTLS connections, 10% of polls asking for the full map, the rest "unchanged";
3. the same with 1,000 more nodes each holding a long-poll open, while one new node joins a
   CVLAN per second (wake latency = registration answered -> each long-poller has its new map);
4. memory per idle mTLS connection (controller RSS before/after opening them).

  .venv/bin/python bench/nodeapi/bench_nodeapi.py [--nodes 2000] [--duration 15] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import os
import random
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402

from bench.common import ControllerProc, machine, pct, start_controller, take_response  # noqa: E402
from cvlan.client import tls  # noqa: E402
from cvlan.client.controller import NodeApiClient  # noqa: E402
from cvlan.devtools.pgcluster import PgCluster  # noqa: E402
from cvlan.wire import nodeproto as wire  # noqa: E402
from cvlan.wire.pb import node_pb2 as pb  # noqa: E402

CVLAN_SIZE = 10


@dataclass
class Node:
    node_id: int
    cvlan: str
    cert_pem: str
    key_pem: str
    version: int = 0


class Conn(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client on one TLS connection (a Protocol: far cheaper than a full
    client, so one load-generator core keeps up). Either awaits one answer (post) or runs queued
    fixed-rate requests (submit), measuring from each request's scheduled time."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.host, self.port, self.ctx = host, port, ctx
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.q: collections.deque[tuple[float, bool]] = collections.deque()
        self.busy: tuple[float, bool] | None = None
        self.stats: RunStats | None = None
        self.measure_from = 0.0
        self.reqs = (b"", b"")

    async def open(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, self.host, self.port, ssl=self.ctx)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.t is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.t.write(http_post(self.host, path, body))
        return await self.waiter

    def start_run(self, stats: RunStats, measure_from: float, unchanged: bytes, full: bytes) -> None:
        self.stats, self.measure_from, self.reqs = stats, measure_from, (unchanged, full)

    def submit(self, sched: float, full: bool) -> None:
        self.q.append((sched, full))
        if self.busy is None:
            self._next()

    def _next(self) -> None:
        if self.q and self.t is not None:
            self.busy = self.q.popleft()
            self.t.write(self.reqs[self.busy[1]])

    def idle(self) -> bool:
        return self.busy is None and not self.q

    def data_received(self, data: bytes) -> None:
        self.buf += data
        got = take_response(self.buf)
        if got is None:
            return
        status, body = got
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))
            return
        if self.busy is None or self.stats is None:
            return
        sched, full = self.busy
        self.busy = None
        if sched >= self.measure_from:
            if status == 200:
                self.stats.lat.append(time.perf_counter() - sched)
                self.stats.full += full
            else:
                self.stats.errors += 1
        self._next()

    def close(self) -> None:
        if self.t is not None:
            self.t.close()


@dataclass
class RunStats:
    lat: list[float] = field(default_factory=list)
    errors: int = 0
    full: int = 0


def http_post(host: str, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {wire.CT_PROTO}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def provision(c: ControllerProc, nodes: int) -> list[tuple[str, str]]:
    """Tenant + CVLANs of CVLAN_SIZE + one token per CVLAN, through the management API."""
    from cvlan.cli.http import Client

    api = Client(c.url, c.token, c.ca_pem, timeout=30)
    api.call("POST", "/api/v1/tenants", {"name": "bench"})
    out = []
    for i in range((nodes + CVLAN_SIZE - 1) // CVLAN_SIZE):
        api.call("POST", "/api/v1/tenants/bench/cvlans", {"name": f"c{i}"})
        tok = api.call("POST", "/api/v1/tenants/bench/tokens", {"cvlan": f"c{i}", "uses": CVLAN_SIZE * 10})
        out.append((f"c{i}", str(tok["token"])))
    return out


async def register_all(
    c: ControllerProc, tokens: list[tuple[str, str]], n: int, conc: int
) -> tuple[list[Node], dict[str, float]]:
    key_pem, csr = tls.new_key_and_csr()
    todo = [(tokens[i // CVLAN_SIZE], i) for i in range(n)]
    random.Random(n).shuffle(todo)  # joins come from many CVLANs at once, not one CVLAN after another
    nodes: list[Node] = []
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        cl = NodeApiClient(c.url, c.ca_pem, timeout=60)
        try:
            while todo:
                (cv, tok), i = todo.pop()
                t = time.perf_counter()
                try:
                    r = await cl.register(tok, os.urandom(32), csr, f"n{i}")
                except Exception:  # noqa: BLE001 - counted
                    errors += 1
                    continue
                lat.append(time.perf_counter() - t)
                nodes.append(Node(r.node_id, cv, r.certificate_pem, key_pem))
        finally:
            await cl.close()

    cpu0, _ = c.cpu_rss()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t0
    cpu1, rss = c.cpu_rss()
    return nodes, {
        "count": len(nodes),
        "errors": errors,
        "wall_s": wall,
        "per_s": len(nodes) / wall,
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "rss_mb": rss,
    }


async def connect(c: ControllerProc, nodes: list[Node], ca_pem: str) -> list[Conn]:
    host, port = c.url.removeprefix("https://").rsplit(":", 1)
    conns = []
    for i in range(0, len(nodes), 50):
        batch = [
            Conn(host, int(port), tls.client_context(ca_pem, n.cert_pem, n.key_pem))
            for n in nodes[i : i + 50]
        ]
        await asyncio.gather(*(x.open() for x in batch))
        conns += batch
    return conns


async def first_polls(conns: list[Conn], nodes: list[Node]) -> None:
    async def one(x: Conn, n: Node) -> None:
        st, body = await x.post("/v1/poll", pb.PollRequest(capability_version=1).SerializeToString())
        assert st == 200, body[:200]
        n.version = wire.decode(pb.PollResponse, body).map_version

    for i in range(0, len(conns), 100):
        await asyncio.gather(
            *(one(x, n) for x, n in zip(conns[i : i + 100], nodes[i : i + 100], strict=True))
        )


async def fixed_rate(
    c: ControllerProc,
    conns: list[Conn],
    nodes: list[Node],
    rate: int,
    duration: float,
    warmup: float,
    full_frac: float,
    stats: RunStats | None = None,
) -> dict[str, float | str]:
    """Polls at `rate` per second for warmup + duration seconds, spread over `conns`; `stats` (a fresh
    RunStats if None) gets every answer's latency and error."""
    stats = stats or RunStats()
    t0 = time.perf_counter() + 0.2
    full = http_post(conns[0].host, "/v1/poll", pb.PollRequest(capability_version=1).SerializeToString())
    protos = conns
    for x, n in zip(conns, nodes, strict=True):
        unchanged = pb.PollRequest(capability_version=1, map_version=n.version).SerializeToString()
        x.start_run(stats, t0 + warmup, http_post(x.host, "/v1/poll", unchanged), full)
    rng = random.Random(7)
    me = psutil.Process()
    total = int(rate * (warmup + duration))
    i = 0
    cpu0 = my0 = 0.0
    started = False
    while i < total:
        now = time.perf_counter()
        if not started and now - t0 >= warmup:
            cpu0, _ = c.cpu_rss()
            my0 = sum(me.cpu_times()[:2])
            started = True
        due = min(total, int((now - t0) * rate) + 1)
        while i < due:
            protos[i % len(protos)].submit(t0 + i / rate, rng.random() < full_frac)
            i += 1
        await asyncio.sleep(0.001)
    end_sched = time.perf_counter()
    while not all(p.idle() for p in protos) and time.perf_counter() - end_sched < 30:
        await asyncio.sleep(0.005)
    cpu1, rss1 = c.cpu_rss()
    my1 = sum(me.cpu_times()[:2])
    wall = time.perf_counter() - (t0 + warmup)
    lat = stats.lat
    return {
        "rate": rate,
        "done": len(lat),
        "achieved_per_s": len(lat) / duration,
        "errors": stats.errors,
        "full_frac": stats.full / max(1, len(lat)),
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "p999_ms": pct(lat, 99.9) * 1e3,
        "max_ms": max(lat, default=0) * 1e3,
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "rss_mb": rss1,
        "loadgen_cpu_pct": 100 * (my1 - my0) / wall,
        "loadavg": os.getloadavg()[0],
    }


class LongPollers:
    """Nodes each holding one long-poll; records when each gets a new map."""

    def __init__(self, conns: list[Conn], nodes: list[Node]) -> None:
        self.conns, self.nodes = conns, nodes
        self.got: dict[str, list[float]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._loop(x, n)) for x, n in zip(self.conns, self.nodes, strict=True)
        ]

    async def _loop(self, x: Conn, n: Node) -> None:
        while True:
            st, body = await x.post(
                "/v1/poll",
                pb.PollRequest(
                    capability_version=1, map_version=n.version, long_poll_s=60
                ).SerializeToString(),
            )
            if st != 200:
                await asyncio.sleep(1)
                continue
            r = wire.decode(pb.PollResponse, body)
            if not r.unchanged:
                n.version = r.map_version
                self.got.setdefault(n.cvlan, []).append(time.perf_counter())

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def joiner(
    c: ControllerProc, tokens: list[tuple[str, str]], lp: LongPollers, stop: asyncio.Event, wakes: list[float]
) -> None:
    """One new node per second into a long-polled CVLAN; wake latency per long-poller of that CVLAN."""
    key_pem, csr = tls.new_key_and_csr()
    cvlans = sorted({n.cvlan for n in lp.nodes})
    per = {cv: sum(1 for n in lp.nodes if n.cvlan == cv) for cv in cvlans}
    tok = dict(tokens)
    cl = NodeApiClient(c.url, c.ca_pem, timeout=30)
    i = 0
    try:
        while not stop.is_set():
            cv = cvlans[i % len(cvlans)]
            i += 1
            before = len(lp.got.get(cv, []))
            await cl.register(tok[cv], os.urandom(32), csr, f"j{i}")
            t = time.perf_counter()
            end = t + 5
            while len(lp.got.get(cv, [])) < before + per[cv] and time.perf_counter() < end:
                await asyncio.sleep(0.002)
            wakes += [x - t for x in lp.got.get(cv, [])[before:]]
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, 1 - (time.perf_counter() - t)))
            except TimeoutError:
                pass
    finally:
        await cl.close()


def fmt(v: float) -> str:
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def prioritize(nice: int) -> None:
    """With autogroup scheduling the CPU is shared per session, so a plain nice value does not
    compete with other sessions' work: start a session of our own (the controller and PostgreSQL
    started later inherit it) and set that session's niceness."""
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        psutil.Process().nice(nice)


async def run_one(args: argparse.Namespace, db: str, tmp: Path) -> dict[str, Any]:
    """Everything for one database: registrations, fixed-rate polls with and without long-polls, memory."""
    c = start_controller(tmp / "data", db=db, taskset="1")
    try:
        tokens = provision(c, args.nodes + args.longpollers)
        print("registering", args.nodes, "nodes ...", flush=True)
        nodes, reg = await register_all(c, tokens, args.nodes, args.concurrency)
        print("registration:", reg, flush=True)
        _, rss_before = c.cpu_rss()
        conns = await connect(c, nodes, c.ca_pem)
        await first_polls(conns, nodes)
        await asyncio.sleep(3)
        _, rss_after = c.cpu_rss()
        idle_kb = (rss_after - rss_before) * 1024 / len(conns)
        print(
            f"{len(conns)} mTLS connections: RSS {rss_before:.0f} -> {rss_after:.0f} MB, {idle_kb:.1f} KB each"
        )
        rows: list[dict[str, Any]] = []
        for rate in args.rates:
            r = await fixed_rate(c, conns, nodes, rate, args.duration, args.warmup, 0.1)
            r["mode"] = "plain"
            print(r, flush=True)
            rows.append(r)
        # Long-poll: the remaining CVLANs get args.longpollers nodes, each holding a long-poll.
        lp_tokens = tokens[args.nodes // CVLAN_SIZE :]
        lp_nodes, _ = await register_all(c, lp_tokens, args.longpollers, args.concurrency)
        lp_conns = await connect(c, lp_nodes, c.ca_pem)
        await first_polls(lp_conns, lp_nodes)
        lp = LongPollers(lp_conns, lp_nodes)
        lp.start()
        await asyncio.sleep(2)
        _, rss_lp = c.cpu_rss()
        for rate in args.rates:
            stop, wakes = asyncio.Event(), list[float]()
            j = asyncio.create_task(joiner(c, lp_tokens, lp, stop, wakes))
            r = await fixed_rate(c, conns, nodes, rate, args.duration, args.warmup, 0.1)
            stop.set()
            await j
            r |= {
                "mode": f"plain + {len(lp_conns)} long-polls",
                "wake_p50_ms": pct(wakes, 50) * 1e3,
                "wake_p99_ms": pct(wakes, 99) * 1e3,
                "wake_max_ms": max(wakes, default=0) * 1e3,
                "wakes": len(wakes),
            }
            print(r, flush=True)
            rows.append(r)
        await lp.stop()
        for x in conns + lp_conns:
            x.close()
    finally:
        c.stop()
    return {
        "reg": reg,
        "rows": rows,
        "nconns": len(conns),
        "rss0": rss_before,
        "rss1": rss_after,
        "idle_kb": idle_kb,
        "rss_lp": rss_lp,
    }


async def main_async(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {0})
    if args.nice:
        prioritize(args.nice)
    out = Path(args.out or f"bench/results/nodeapi-{dt.date.today():%Y-%m-%d}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cvlan-bench-") as tmp:
        for db in args.dbs:
            print(f"== {db}", flush=True)
            if db == "sqlite":
                results[db] = await run_one(args, "", Path(tmp) / db)
                continue
            cluster = PgCluster().start()
            try:
                results[db] = await run_one(args, cluster.create_db("bench"), Path(tmp) / db)
            finally:
                cluster.stop()
    write_report(out, args, results)
    write_chart(out, results)
    print("report:", out / "report.md")
    return 0


def write_report(out: Path, args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    lines = [
        f"# Node API benchmark, {dt.date.today():%Y-%m-%d}",
        "",
        f"Machine: {machine()}. Controller (`cvlan-controller serve`, embedded TLS, default settings, "
        "uvloop) pinned to CPU 1 with `taskset -c 1`; this load generator (uvloop, a minimal HTTP/1.1 client "
        "as an asyncio Protocol) pinned to CPU 0. All traffic on 127.0.0.1. The store is the embedded SQLite "
        "or an ephemeral local PostgreSQL (not pinned). The machine is a shared VM on which other work ran "
        "at the same time (see the load average column): treat single runs as noisy, latencies especially.",
        "",
        "Command: `.venv/bin/python bench/nodeapi/bench_nodeapi.py "
        + " ".join(sys.argv[1:])
        + "`"
        + (
            f" (niceness {args.nice} for the controller and the load generator, because other work shared the "
            "cores)"
            if args.nice
            else ""
        ),
        "",
        "## Registrations",
        "",
        f"Nodes registered through `POST /v1/register` (token + CSR -> certificate; one transaction each: token "
        f"use, node, address, audit, certificate), {args.concurrency} in flight, CVLANs of {CVLAN_SIZE}.",
        "",
        "| store | nodes | registrations/s | p50 ms | p99 ms | controller CPU % | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for db, r in results.items():
        g = r["reg"]
        lines.append(
            f"| {db} | {g['count']:.0f} | {g['per_s']:.0f} | {g['p50_ms']:.0f} | {g['p99_ms']:.0f} | "
            f"{g['cpu_pct']:.0f} | {g['errors']:.0f} |"
        )
    nlp = args.longpollers
    lines += [
        "",
        "## Polls at fixed rates",
        "",
        f"Open loop over {args.nodes} keep-alive mutual-TLS connections (one per node, round robin): request i "
        "is scheduled at t0 + i/rate and its latency runs from that time to the last byte of the answer "
        f"(no coordinated omission). {args.warmup:.0f} s warm-up, {args.duration:.0f} s measured. 10 % of polls "
        "ask for the full map (map_version 0: 9 peers, about 1 KB of protobuf), the rest hold the current "
        'version and are answered "unchanged" from memory. "+ long-polls": another '
        f"{nlp} nodes each hold a 60 s long-poll open at the same time, and one new node joins one of their "
        "CVLANs every second; wake = registration answered -> each long-poller of that CVLAN has its new map.",
        "",
        "| store | mode | rate /s | achieved /s | p50 ms | p99 ms | p99.9 ms | max ms | errors | controller CPU % "
        "| RSS MB | wake p50 ms | wake p99 ms | loadgen CPU % | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for db, res in results.items():
        for r in res["rows"]:
            w50, w99 = r.get("wake_p50_ms"), r.get("wake_p99_ms")
            lines.append(
                f"| {db} | {r['mode']} | {r['rate']} | {fmt(r['achieved_per_s'])} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['max_ms']:.1f} | {r['errors']} | "
                f"{r['cpu_pct']:.1f} | {r['rss_mb']:.0f} | {'-' if w50 is None else f'{w50:.1f}'} | "
                f"{'-' if w99 is None else f'{w99:.1f}'} | {r['loadgen_cpu_pct']:.0f} | {r['loadavg']:.1f} |"
            )
    lines += ["", "## Memory", ""]
    for db, r in results.items():
        lines.append(
            f"* {db}: controller RSS {r['rss0']:.0f} MB before and {r['rss1']:.0f} MB after opening {r['nconns']} "
            f"mTLS keep-alive connections (one poll each, then idle): **{r['idle_kb']:.1f} KB per idle "
            f"connection** (including the node's cached identity and its CVLAN's map). With {nlp} more "
            f"connections each holding a long-poll: {r['rss_lp']:.0f} MB."
        )
    lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def write_chart(out: Path, results: dict[str, dict[str, Any]]) -> None:
    """polls.png: controller CPU and p99 latency per store, mode and rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(db, r) for db, res in results.items() for r in res["rows"]]
    labels = [f"{db}\n{'long-poll' if 'long' in r['mode'] else 'plain'}\n{r['rate']}/s" for db, r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.bar(range(len(rows)), [r["cpu_pct"] for _, r in rows], color="#4c72b0")
    a.axhline(100, color="grey", lw=0.8, ls="--")
    a.set_title("controller CPU (% of its one pinned core)")
    b.bar(range(len(rows)), [r["p99_ms"] for _, r in rows], color="#dd8452")
    b.set_yscale("log")
    b.set_title("poll latency p99 (ms, log scale)")
    for ax in (a, b):
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "polls.png", dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000, help="polling nodes = keep-alive mTLS connections")
    ap.add_argument("--longpollers", type=int, default=1000, help="extra nodes holding long-polls")
    ap.add_argument("--concurrency", type=int, default=32, help="registrations in flight")
    ap.add_argument("--rates", type=int, nargs="+", default=[3300, 6600])
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--dbs", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"])
    ap.add_argument("--out", help="report directory (default bench/results/nodeapi-DATE)")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for the controller and the load generator (e.g. -15 on a busy shared machine)",
    )
    import uvloop

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks: stop the controller
    return uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
