"""Two controller processes on one PostgreSQL behind cvlan-front (docs/FRONT.md, "Several controllers"),
against one, in one run:

  registration  a burst of registrations through the front, with one controller behind it, then two
  knee          polls at fixed rates (open loop, latency from each poll's scheduled time, 10 % asking for
                the full map) over keep-alive mTLS connections through the front, with one controller
                behind it, then two: the sustainable rate is the highest with every poll answered and
                p99 <= 50 ms
  kill          polls at a fixed rate and registrations (each retried with its key, as cvlan-ctrl does)
                through the front with two controllers; one is SIGKILLed: the error window
  pg-restart    the same, and PostgreSQL is stopped (fast) and started again 3 s later instead

Everything runs on this machine: PostgreSQL (a cluster of its own, fsync off), the controllers, the
front (one worker) and this load generator (uvloop). Figures go to stdout and to a report with graphs.

  .venv/bin/python bench/front/bench_multi.py [--nodes 1000] [--rates 300 600 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ControllerProc, free_port, machine, pct, start_controller  # noqa: E402
from bench.nodeapi.bench_nodeapi import (  # noqa: E402
    CVLAN_SIZE,
    Node,
    RunStats,
    connect,
    first_polls,
    fixed_rate,
    provision,
    register_all,
)
from cvlan.client import tls  # noqa: E402
from cvlan.client.controller import ControlError, NodeApiClient  # noqa: E402
from cvlan.devtools.pgcluster import PgCluster  # noqa: E402

LIMIT_MS = 50.0
BIN_S = 0.5
"""Width of a timeline bin in the kill and restart runs."""


class Servers:
    """What bench_nodeapi's helpers read of a server -- its URL, CA, and CPU/RSS -- for a front and the
    processes behind it together (controllers, the front, PostgreSQL and its backends)."""

    def __init__(self, url: str, ca_pem: str, pids: dict[str, int]) -> None:
        self.url, self.ca_pem, self.pids = url, ca_pem, pids

    def procs(self) -> dict[str, list[psutil.Process]]:
        out: dict[str, list[psutil.Process]] = {}
        for name, pid in self.pids.items():
            try:
                p = psutil.Process(pid)
                out[name] = [p, *(p.children(recursive=True) if name == "postgresql" else [])]
            except psutil.NoSuchProcess:
                out[name] = []
        return out

    def cpu_by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, ps in self.procs().items():
            total = 0.0
            for p in ps:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            out[name] = total
        return out

    def cpu_rss(self) -> tuple[float, float]:
        rss = 0.0
        for ps in self.procs().values():
            for p in ps:
                try:
                    rss += p.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    pass
        return sum(self.cpu_by_name().values()), rss


class TimedList(list[float]):
    """A list of latencies that also keeps when each was appended."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, v: float) -> None:
        self.at.append(time.perf_counter())
        super().append(v)


class Timeline(RunStats):
    """RunStats that keeps when each answer and each error came."""

    def __init__(self) -> None:
        object.__setattr__(self, "error_at", [])
        super().__init__(lat=TimedList())

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "errors" and "errors" in self.__dict__:  # not the first value, set by __init__
            self.error_at.append(time.perf_counter())
        super().__setattr__(name, value)


@dataclass
class Registrations:
    done: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    latency: list[tuple[float, float]] = field(default_factory=list)
    """(when answered, seconds from the first attempt) per registration."""


def start_front(tmp: Path, data: Path, socks: list[Path], name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cvlan.front", "--listen", f"127.0.0.1:{port}", "--workers", "1"]
    crt, key, ca = (next(data.rglob(n)) for n in ("server.crt", "server.key", "ca.crt"))
    cmd += ["--cert", str(crt), "--key", str(key), "--ca", str(ca)]
    cmd += ["--log-level", "warning"]
    for s in socks:
        cmd += ["--backend", str(s)]
    proc = subprocess.Popen(cmd, stdout=(tmp / f"front-{name}.log").open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"https://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("cvlan-front did not listen in 30 s")


def start_ctl(data: Path, db: str, sock: Path) -> ControllerProc:
    env = {
        "CVLAN_CONTROLLER_PROXY_SOCKET": str(sock),
        "CVLAN_CONTROLLER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    c = start_controller(data, db=db, extra_env=env)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no proxy socket {sock} in 60 s")
        time.sleep(0.1)
    return c


def step_cpu(srv: Servers, before: dict[str, float], wall: float) -> dict[str, float]:
    after = srv.cpu_by_name()
    return {f"cpu_{k}_pct": 100 * (after[k] - before.get(k, after[k])) / wall for k in after}


async def knee(
    srv: Servers, nodes: list[Node], rates: list[int], duration: float, warmup: float
) -> list[dict[str, Any]]:
    conns = await connect(srv, nodes, srv.ca_pem)  # type: ignore[arg-type]
    await first_polls(conns, nodes)
    rows = []
    for rate in rates:
        cpu0 = srv.cpu_by_name()
        t0 = time.perf_counter()
        r: dict[str, Any] = await fixed_rate(srv, conns, nodes, rate, duration, warmup, 0.1)  # type: ignore[arg-type]
        r |= step_cpu(srv, cpu0, time.perf_counter() - t0)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        rows.append(r)
        if r["achieved_per_s"] < 0.8 * rate:
            break  # well past the knee: the next step only queues more
    for x in conns:
        x.close()
    return rows


def sustainable(rows: list[dict[str, Any]]) -> int:
    """The highest offered rate answered in full (97 %, no error) with the median within the limit (the
    p99 is reported beside it: on the shared machine it is set by other work as much as by this)."""
    ok = [
        r["rate"]
        for r in rows
        if r["errors"] == 0 and r["achieved_per_s"] >= 0.97 * r["rate"] and r["p50_ms"] <= LIMIT_MS
    ]
    return max(ok, default=0)


async def keep_registering(
    url: str, ca_pem: str, tokens: list[str], prefix: str, stop: asyncio.Event, regs: Registrations
) -> None:
    """About 5 registrations/s, each retried with its key every 0.5 s until answered."""
    key_pem, csr = tls.new_key_and_csr()
    client = NodeApiClient(url, ca_pem, timeout=30)
    i = 0
    try:
        while not stop.is_set():
            name, key, t0 = f"{prefix}{i}", os.urandom(32), time.perf_counter()
            tok = tokens[i // CVLAN_SIZE]
            for _ in range(240):
                try:
                    await client.register(tok, key, csr, name)
                    break
                except ControlError:
                    regs.failed_at.append(time.perf_counter())
                    await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"registration {name} not answered in 120 s")
            regs.done.append(name)
            regs.latency.append((time.perf_counter(), time.perf_counter() - t0))
            i += 1
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def window(
    srv: Servers,
    nodes: list[Node],
    rate: int,
    tokens: list[str],
    prefix: str,
    trouble: Callable[[], Awaitable[None]],
    duration: float = 24.0,
    at: float = 8.0,
) -> dict[str, Any]:
    """Polls at `rate` and registrations for `duration` s with `trouble` at `at` s; the timeline."""
    conns = await connect(srv, nodes, srv.ca_pem)  # type: ignore[arg-type]
    await first_polls(conns, nodes)
    stats, regs, stop = Timeline(), Registrations(), asyncio.Event()
    t0 = time.perf_counter()
    reg_task = asyncio.create_task(keep_registering(srv.url, srv.ca_pem, tokens, prefix, stop, regs))

    async def later() -> float:
        await asyncio.sleep(at + 1.0)  # fixed_rate's own warmup is 1 s
        t = time.perf_counter()
        await trouble()
        return t

    trouble_task = asyncio.create_task(later())
    r = await fixed_rate(srv, conns, nodes, rate, duration, 1.0, 0.1, stats)  # type: ignore[arg-type]
    stop.set()
    await reg_task
    t_trouble = await trouble_task
    for x in conns:
        x.close()
    lat: TimedList = stats.lat  # type: ignore[assignment]
    scheduled = int(rate * duration)
    return {
        "rate": rate,
        "summary": r,
        "t0": t0,
        "trouble_s": t_trouble - t0,
        "answers": [(a - t0, v) for a, v in zip(lat.at, lat, strict=True)],
        "poll_errors": [e - t0 for e in stats.error_at],  # type: ignore[attr-defined]
        "polls_unanswered": max(0, scheduled - len(lat) - stats.errors),
        "registered": list(regs.done),
        "register_failures": [f - t0 for f in regs.failed_at],
        "register_latency": [(a - t0, v) for a, v in regs.latency],
    }


def window_figures(w: dict[str, Any]) -> dict[str, Any]:
    errs = sorted(e for e in w["poll_errors"] + w["register_failures"] if e >= w["trouble_s"])
    after = [v for a, v in w["answers"] if a >= w["trouble_s"]]
    before = [v for a, v in w["answers"] if a < w["trouble_s"]]
    slow = [a for a, v in w["answers"] if a >= w["trouble_s"] and v * 1e3 > LIMIT_MS]
    return {
        "poll_errors": len(w["poll_errors"]),
        "polls_unanswered": w["polls_unanswered"],
        "register_failures": len(w["register_failures"]),
        "registered": len(w["registered"]),
        "error_window_s": (errs[-1] - errs[0]) if errs else 0.0,
        "first_error_after_s": (errs[0] - w["trouble_s"]) if errs else None,
        "slow_window_s": (max(slow) - w["trouble_s"]) if slow else 0.0,
        "p99_before_ms": pct(before, 99) * 1e3,
        "p99_after_ms": pct(after, 99) * 1e3,
        "max_after_ms": max(after, default=0) * 1e3,
        "reg_max_s": max((v for _, v in w["register_latency"]), default=0.0),
    }


def in_db(pg: PgCluster, db: str, prefix: str) -> int:
    rows = pg.query(f"SELECT count(*) FROM nodes WHERE name LIKE '{prefix}%'", db)
    return int(rows[0][0])


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pg = PgCluster(base=tmp, fsync=False).start()
    ctls: list[ControllerProc] = []
    fronts: list[subprocess.Popen[bytes]] = []
    try:
        db = "bench"
        url = pg.create_db(db)
        data, socks = tmp / "data", [tmp / "a.sock", tmp / "b.sock"]
        ctls.append(start_ctl(data, url, socks[0]))
        ctls.append(start_ctl(data, url, socks[1]))
        pg_pid = pg.pid() or 0
        tokens = provision(ctls[0], args.nodes + 400)
        f1, url1 = start_front(tmp, data, socks[:1], "one")
        f2, url2 = start_front(tmp, data, socks, "two")
        fronts += [f1, f2]
        ca = ctls[0].ca_pem

        def servers(url: str, front: subprocess.Popen[bytes], n: int) -> Servers:
            pids = {"front": front.pid, "postgresql": pg_pid}
            pids |= {f"controller_{'ab'[i]}": ctls[i].proc.pid for i in range(n)}
            return Servers(url, ca, pids)

        one, two = servers(url1, f1, 1), servers(url2, f2, 2)
        out: dict[str, Any] = {"load_before": os.getloadavg()}
        # Registration bursts, then the nodes they made poll.
        per = args.nodes // 2
        toks = [t for _, t in tokens]
        split = per // CVLAN_SIZE
        regs = {}
        nodes: list[Node] = []
        for i, (label, srv) in enumerate((("one", one), ("two", two))):
            mine = tokens[i * split : (i + 1) * split]
            made, reg = await register_all(srv, mine, per, args.concurrency)  # type: ignore[arg-type]
            print(f"registration burst, {label} controller(s):", json.dumps(reg), flush=True)
            regs[label] = reg
            nodes += made
        out["registration"] = regs
        out["knee"] = {}
        for label, srv in (("one", one), ("two", two)):
            print(f"== knee, {label} controller(s) behind the front", flush=True)
            out["knee"][label] = await knee(srv, nodes, args.rates, args.duration, args.warmup)
        out["sustainable"] = {k: sustainable(v) for k, v in out["knee"].items()}
        rate = args.window_rate or max(100, out["sustainable"]["two"] // 2)
        rest = toks[2 * split :]

        async def kill() -> None:
            ctls[1].proc.send_signal(signal.SIGKILL)
            ctls[1].proc.wait(10)

        print(f"== SIGKILL of controller b under {rate} polls/s", flush=True)
        w = await window(two, nodes, rate, rest[: len(rest) // 2], "k", kill)
        w["figures"] = window_figures(w) | {"in_db": in_db(pg, db, "k")}
        print(json.dumps(w["figures"]), flush=True)
        out["kill"] = w
        socks[1].unlink(missing_ok=True)  # what the killed process left
        ctls[1] = start_ctl(data, url, socks[1])  # back for the restart run
        two.pids["controller_b"] = ctls[1].proc.pid
        await asyncio.sleep(12)  # the front takes it back (its backoff is at most 10 s)

        async def restart() -> None:
            await asyncio.to_thread(pg.stop_server)
            await asyncio.sleep(3)
            await asyncio.to_thread(pg.start_server)
            two.pids["postgresql"] = pg.pid() or 0

        print(f"== PostgreSQL restart under {rate} polls/s", flush=True)
        w = await window(two, nodes, rate, rest[len(rest) // 2 :], "r", restart)
        w["figures"] = window_figures(w) | {"in_db": in_db(pg, db, "r")}
        print(json.dumps(w["figures"]), flush=True)
        out["pg_restart"] = w
        out["load_after"] = os.getloadavg()
        return out
    finally:
        for f in fronts:
            f.terminate()
            f.wait(15)
        for c in ctls:
            c.stop()
        pg.stop()


def write_report(out: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    def row(r: dict[str, Any]) -> str:
        cpu = " / ".join(
            f"{r.get(f'cpu_{k}_pct', 0):.0f}" for k in ("controller_a", "controller_b", "front", "postgresql")
        )
        return (
            f"| {r['rate']} | {r['achieved_per_s']:.0f} | {r['errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['max_ms']:.0f} | {cpu} | {r['loadgen_cpu_pct']:.0f} | {r['loadavg']:.1f} |"
        )

    reg = res["registration"]
    lines = [
        f"# Two controllers behind cvlan-front, {dt.date.today():%Y-%m-%d}",
        "",
        f"Machine: {machine()}, **shared**: other work ran on it at the same time (load average "
        f"{res['load_before'][0]:.1f} at the start, {res['load_after'][0]:.1f} at the end; 2 cores). "
        "PostgreSQL (a cluster of its own, fsync off), two `cvlan-controller serve` processes with proxy "
        "sockets on it, `cvlan-front` (one worker) in front with one of them (`--backend a`) and with both "
        "(`--backend a --backend b`), and this load generator, all on the same 2 cores, unpinned. "
        f"{args.nodes} nodes in CVLANs of {CVLAN_SIZE}, each with its own keep-alive mTLS connection to the "
        "front. Command: `.venv/bin/python bench/front/bench_multi.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "## Registration burst",
        "",
        "| controllers | registrations | errors | per s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in reg.items():
        lines.append(
            f"| {k} | {r['count']} | {r['errors']} | {r['per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    lines += [
        "",
        f"## The knee: polls at fixed rates (10 % full maps), {args.duration:g} s per step",
        "",
        f"Sustainable (every poll answered, no error, median <= {LIMIT_MS:g} ms): **one controller "
        f"{res['sustainable']['one']}/s, two controllers {res['sustainable']['two']}/s**.",
        "",
        "![knee](knee.png)",
        "",
    ]
    for k, rows in res["knee"].items():
        lines += [
            f"### {k} controller(s)",
            "",
            "| offered /s | answered /s | errors | p50 ms | p99 ms | max ms | CPU % a / b / front / PostgreSQL "
            "| load generator CPU % | load avg |",
            "|---|---|---|---|---|---|---|---|---|",
            *[row(r) for r in rows],
            "",
        ]
    for key, title in (("kill", "Controller b SIGKILLed under load"), ("pg_restart", "PostgreSQL restarted")):
        f = res[key]["figures"]
        lines += [
            f"## {title}",
            "",
            f"{res[key]['rate']} polls/s through the front with both controllers and about 4 registrations/s "
            f"(each retried every 0.5 s with its key until answered, as cvlan-ctrl does); the event at "
            f"{res[key]['trouble_s']:.1f} s.",
            "",
            f"* polls answered with an error: {f['poll_errors']}; polls never answered: {f['polls_unanswered']}",
            f"* registration attempts that failed (and were retried): {f['register_failures']}; error window "
            f"(first to last error): {f['error_window_s']:.2f} s",
            f"* registrations answered: {f['registered']}, in the database: {f['in_db']} (none lost, none twice: "
            f"{'yes' if f['registered'] == f['in_db'] else 'NO'}); the slowest took {f['reg_max_s']:.2f} s",
            f"* poll p99 before {f['p99_before_ms']:.1f} ms, after {f['p99_after_ms']:.1f} ms (max "
            f"{f['max_after_ms']:.0f} ms); polls slower than {LIMIT_MS:g} ms until "
            f"{f['slow_window_s']:.2f} s after the event",
            "",
            f"![{key}]({key}.png)",
            "",
        ]
    (out / "report.md").write_text("\n".join(lines))


def write_graphs(out: Path, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, rows in res["knee"].items():
        a.plot(
            [r["rate"] for r in rows], [r["achieved_per_s"] for r in rows], "o-", label=f"{k} controller(s)"
        )
        b.plot([r["rate"] for r in rows], [r["p99_ms"] for r in rows], "o-", label=f"{k} controller(s)")
    a.set(title="answered polls/s against offered", xlabel="offered /s", ylabel="answered /s")
    b.set(title="poll p99 (ms, log)", xlabel="offered /s", yscale="log")
    b.axhline(LIMIT_MS, color="grey", ls="--", lw=0.8)
    for ax in (a, b):
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "knee.png", dpi=100)
    plt.close(fig)
    for key in ("kill", "pg_restart"):
        w = res[key]
        end = max((a for a, _ in w["answers"]), default=1.0)
        nbins = int(end / BIN_S) + 1
        count = [0] * nbins
        worst = [0.0] * nbins
        for t, v in w["answers"]:
            i = int(t / BIN_S)
            count[i] += 1
            worst[i] = max(worst[i], v * 1e3)
        xs = [i * BIN_S for i in range(nbins)]
        fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        a.bar(xs, [c / BIN_S for c in count], width=BIN_S, color="#4c72b0", label="polls answered /s")
        for e in w["poll_errors"]:
            a.axvline(e, color="red", lw=0.6)
        for e in w["register_failures"]:
            a.axvline(e, color="orange", lw=0.6)
        a.set(
            ylabel="answered /s",
            title=f"{key}: polls answered (red: poll errors, orange: failed registrations)",
        )
        b.plot(xs, worst, color="#dd8452")
        b.set(ylabel="slowest poll (ms, log)", yscale="log", xlabel="seconds")
        for ax in (a, b):
            ax.axvline(w["trouble_s"], color="black", ls="--", lw=1)
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=100)
        plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000, help="polling nodes (half registered in each burst)")
    ap.add_argument("--concurrency", type=int, default=32, help="registrations in flight in a burst")
    ap.add_argument("--rates", type=int, nargs="+", default=[300, 600, 900, 1200, 1600, 2000, 2600])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds measured per rate")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument(
        "--window-rate",
        type=int,
        default=0,
        help="polls/s in the kill and restart runs (default: half the two-controller knee)",
    )
    ap.add_argument("--out", help="report directory (default bench/results/multi-controller-DATE)")
    args = ap.parse_args()
    out = Path(args.out or f"bench/results/multi-controller-{dt.date.today():%Y-%m-%d}")
    out.mkdir(parents=True, exist_ok=True)
    import uvloop

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="cvlan-bench-") as tmp:
        os.chmod(tmp, 0o755)
        res = uvloop.run(run(args, Path(tmp)))
    (out / "results.json").write_text(json.dumps(res))
    write_report(out, args, res)
    write_graphs(out, res)
    print("report:", out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
