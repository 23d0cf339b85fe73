"""The node API's poll path, two source trees side by side in one run.

A poll as a TLS front forwards it: plain HTTP/1.1 on the controller's proxy socket with the node's
certificate in X-Client-Cert, taken by the lean server and answered from the map cache (9 in 10
"unchanged", 1 in 10 the full map). For each round, a controller from each tree in turn (`--old-src`
and `--new-src`, e.g. an older commit exported with `git archive`) is started pinned to CPU 1 on its
own SQLite store, `--nodes` nodes register, and `--conns` keep-alive connections send
`--polls` polls closed-loop from this process (pinned to CPU 0). Measured per run: polls/s, the
controller's CPU time per poll (its own user + system time: the figure least moved by other work on
a shared machine), latency p50/p99. The report gives the medians over the rounds and new/old.

  mkdir -p /tmp/cvlan-old && git archive COMMIT src | tar -x -C /tmp/cvlan-old
  .venv/bin/python bench/nodeapi/bench_poll_compare.py --old-src /tmp/cvlan-old/src \\
      --old-label COMMIT --rounds 5 --out bench/results/nodeapi-poll-DATE

On a machine doing nothing else: the controller's CPU per poll is the figure to compare; a loaded
machine moves even that by more than the difference sought (nodeapi-poll-2026-12-06).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402

from bench.common import ProxyConn, http_request, machine, pct, start_proxied  # noqa: E402
from cvlan.client import tls  # noqa: E402
from cvlan.common import adminconf  # noqa: E402
from cvlan.wire import nodeproto as wire  # noqa: E402
from cvlan.wire.pb import node_pb2 as pb  # noqa: E402


async def api(c: ProxyConn, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    raw = http_request(
        path, json.dumps(body).encode(), f"Authorization: Bearer {token}", ct="application/json"
    )
    status, answer = await c.send(raw)
    assert status == 201, answer[:300]
    return dict(json.loads(answer))


async def enrol(sock: Path, conf: adminconf.AdminConf, nodes: int) -> list[tuple[bytes, int]]:
    """Tenant, CVLAN, token and `nodes` registered nodes: each one's X-Client-Cert and map version."""
    loop = asyncio.get_running_loop()
    _, c = await loop.create_unix_connection(ProxyConn, str(sock))
    await api(c, conf.token, "/api/v1/tenants", {"name": "bench"})
    await api(c, conf.token, "/api/v1/tenants/bench/cvlans", {"name": "lan", "subnet": "10.64.0.0/22"})
    tok = (await api(c, conf.token, "/api/v1/tenants/bench/tokens", {"cvlan": "lan", "reusable": True}))[
        "token"
    ]
    _, csr = tls.new_key_and_csr()
    got = []
    for i in range(nodes):
        req = wire.register_request(tok, os.urandom(32), csr, f"host-{i}", "linux bench")
        body = req.SerializeToString()
        status, answer = await c.post("/v1/register", body)
        assert status == 200, answer[:300]
        reg = wire.decode(pb.RegisterResponse, answer)
        got.append((urllib.parse.quote(reg.certificate_pem).encode(), 0))
    # Each node's current map version, from a first full poll.
    out = []
    for cert, _ in got:
        status, answer = await c.send(poll(cert, 0))
        assert status == 200, answer[:300]
        out.append((cert, wire.decode(pb.PollResponse, answer).map_version))
    c.close()
    return out


def poll(cert: bytes, version: int) -> bytes:
    body = pb.PollRequest(capability_version=wire.CAPABILITY_VERSION, map_version=version).SerializeToString()
    return http_request("/v1/poll", body, "X-Client-Cert: " + cert.decode())


async def drive(
    sock: Path, nodes: list[tuple[bytes, int]], conns: int, polls: int, pid: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    unchanged = [poll(cert, v) for cert, v in nodes]
    full = [poll(cert, 0) for cert, _ in nodes]
    left = polls
    lat: list[float] = []
    errors = 0

    async def worker(k: int) -> None:
        nonlocal left, errors
        _, c = await loop.create_unix_connection(ProxyConn, str(sock))
        i = k
        while left > 0:
            left -= 1
            i = (i + conns) % len(nodes)
            raw = full[i] if rng.random() < 0.1 else unchanged[i]
            t = time.perf_counter()
            status, _ = await c.send(raw)
            lat.append(time.perf_counter() - t)
            errors += status != 200
        c.close()

    p = psutil.Process(pid)
    c0 = p.cpu_times()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conns)))
    wall = time.perf_counter() - t0
    c1 = p.cpu_times()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {
        "polls": len(lat), "errors": errors, "wall_s": wall, "per_s": len(lat) / wall,
        "cpu_us_per_poll": cpu / max(len(lat), 1) * 1e6,
        "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
    }  # fmt: skip


def one_run(src: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cvlan-pollbench-") as tmp:
        data, sock = Path(tmp) / "data", Path(tmp) / "proxy.sock"
        ctl = start_proxied(data, sock, src, metrics_listen="", timeout=300)
        try:
            conf = adminconf.load(data / "admin.conf")
            nodes = asyncio.run(enrol(sock, conf, args.nodes))
            asyncio.run(drive(sock, nodes, args.conns, args.polls // 5, ctl.proc.pid))  # warm-up
            res = asyncio.run(drive(sock, nodes, args.conns, args.polls, ctl.proc.pid))
        finally:
            ctl.stop(grace=30)
    return res | {"load_1m": os.getloadavg()[0]}


def report(out: Path, args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    def med(label: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[label]))

    rows = [
        ("polls/s (wall)", "per_s", "{:,.0f}"),
        ("controller CPU per poll, µs", "cpu_us_per_poll", "{:.1f}"),
        ("latency p50, ms", "p50_ms", "{:.2f}"),
        ("latency p99, ms", "p99_ms", "{:.2f}"),
    ]
    lines = [
        f"# Node API poll path, before and after the controller restructure ({args.date})",
        "",
        f"Machine: {machine()}. Shared with other work during the run (1-minute load average "
        f"{min(r['load_1m'] for v in runs.values() for r in v):.0f}-"
        f"{max(r['load_1m'] for v in runs.values() for r in v):.0f} on 2 cores): wall-clock figures are "
        "noisy; the controller's CPU time per poll is the figure to compare.",
        "",
        "What runs: a controller pinned to CPU 1 (SQLite store, proxy socket, lean node API server), "
        f"{args.nodes} registered nodes of one CVLAN, {args.conns} keep-alive connections from this "
        f"process (CPU 0) sending {args.polls:,} polls closed-loop after a warm-up of {args.polls // 5:,}: "
        "each a poll as a TLS front forwards it (X-Client-Cert), 1 in 10 asking for the full map, the "
        f'rest answered "unchanged" from the map cache. {args.rounds} rounds, old and new alternately, '
        "each run a fresh controller.",
        "",
        f"Command: `.venv/bin/python bench/nodeapi/bench_poll_compare.py --old-src OLD/src --old-label "
        f"{args.old_label} --rounds {args.rounds} --nodes {args.nodes} --conns {args.conns} --polls {args.polls}`",
        "",
        f"| median over {args.rounds} rounds | old ({args.old_label}) | new | new / old |",
        "|---|---:|---:|---:|",
    ]
    for name, key, fmt in rows:
        o, n = med("old", key), med("new", key)
        lines.append(f"| {name} | {fmt.format(o)} | {fmt.format(n)} | {n / o:.2f} |")
    lines += ["", "Every run:", "", "| run | polls/s | CPU µs/poll | p50 ms | p99 ms | errors | load |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label in ("old", "new"):
        for i, r in enumerate(runs[label], 1):
            lines.append(
                f"| {label} {i} | {r['per_s']:,.0f} | {r['cpu_us_per_poll']:.1f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['errors']} | {r['load_1m']:.0f} |"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", required=True, help="src directory of the older tree")
    ap.add_argument("--new-src", default=str(Path(__file__).resolve().parents[2] / "src"))
    ap.add_argument("--old-label", default="old", help="what the older tree is (a commit)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--polls", type=int, default=20_000)
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for label, src in (
            (("old", args.old_src), ("new", args.new_src))
            if r % 2 == 0
            else (("new", args.new_src), ("old", args.old_src))
        ):
            res = one_run(src, args)
            print(f"round {r + 1} {label}: {res}", flush=True)
            runs[label].append(res)
    report(Path(args.out), args, runs)
    print("report:", Path(args.out) / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
