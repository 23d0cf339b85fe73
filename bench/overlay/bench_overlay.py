"""Overlay throughput: raw veth vs hand-configured wireguard-go vs the CVLAN tunnel vs Nebula.

All four run on the same namespace pair (a, b joined by one veth), one after the other, with the
same tunnel MTU. For each: iperf3 TCP, 1 stream and 4 streams, bounded in time, several runs;
the report gives medians (and every run), daemon CPU, and the ratio CVLAN / hand wireguard-go.

The CVLAN tunnel is the full stack: a controller (SQLite) in a third namespace reachable from both
nodes, cvlan-ctrl + cvland on each node, enrolled with a token. The hand tunnel is wireguard-go
configured with `wg set` and `ip`, nothing else.

  .venv/bin/python bench/overlay/bench_overlay.py [--runs 3] [--seconds 5] [--mtu 1280] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402

from bench.common import machine  # noqa: E402
from cvlan.devtools.lab.netns import Lab, Netns, Proc, sh  # noqa: E402
from cvlan.wire.keys import generate_keypair  # noqa: E402
from tests.harness.stack import Controller, start_node  # noqa: E402

STREAMS = (1, 4)
IPERF_PORT = 5201


@dataclass
class Result:
    path: str
    runs: dict[int, list[float]] = field(default_factory=dict)
    """streams -> Mbit/s of each run."""
    cpu: dict[int, list[float]] = field(default_factory=dict)
    """streams -> daemon CPU (% of one core, both ends summed) of each run."""
    note: str = ""
    dst: str = ""
    pids: list[int] = field(default_factory=list)
    after: Callable[[], str] | None = None
    """Appended to the note once every run is done (e.g. the endpoints then in use)."""

    def median(self, streams: int) -> float:
        return statistics.median(self.runs[streams]) if self.runs.get(streams) else float("nan")

    def cpu_median(self, streams: int) -> float:
        return statistics.median(self.cpu[streams]) if self.cpu.get(streams) else float("nan")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def iperf(a: Netns, b: Netns, dst: str, streams: int, seconds: int) -> float:
    """One bounded iperf3 TCP run from a to dst (served in b); Mbit/s received."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", b.name, "iperf3", "-s", "-1", "-B", dst, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = a.exec(
            "iperf3",
            "-c",
            dst,
            "-p",
            str(IPERF_PORT),
            "-t",
            str(seconds),
            "-P",
            str(streams),
            "-J",
            timeout=seconds + 30,
        )
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def measure_once(res: Result, a: Netns, b: Netns, streams: int, seconds: int) -> None:
    c0, t0 = cpu_seconds(res.pids), time.monotonic()
    mbit = iperf(a, b, res.dst, streams, seconds)
    cpu = 100 * (cpu_seconds(res.pids) - c0) / (time.monotonic() - t0)
    res.runs.setdefault(streams, []).append(mbit)
    res.cpu.setdefault(streams, []).append(cpu)
    print(f"  {res.path:<22} {streams} stream(s): {mbit:8.0f} Mbit/s  daemon CPU {cpu:5.0f} %", flush=True)


def measure_all(results: list[Result], a: Netns, b: Netns, runs: int, seconds: int) -> None:
    """Interleave the paths run by run, so that load drifting over time hits every path alike."""
    for r in results:
        if not a.wait_ping(r.dst, timeout=30):
            raise RuntimeError(f"{r.path}: {r.dst} does not answer ping")
    for i in range(runs):
        print(f"run {i + 1}/{runs}", flush=True)
        order = results[i % len(results) :] + results[: i % len(results)]  # rotate who goes first
        for streams in STREAMS:
            for r in order:
                measure_once(r, a, b, streams, seconds)


# --- the four paths ----------------------------------------------------------------------------


def bench_raw(lab: Lab, a: Netns, b: Netns, args: argparse.Namespace) -> Result:
    res = Result("raw veth", note="no tunnel, MTU 1500")
    res.dst = "10.201.0.2"
    return res


def bench_hand_wg(lab: Lab, a: Netns, b: Netns, args: argparse.Namespace) -> Result:
    res = Result("wireguard-go by hand", note=f"wg set + ip, MTU {args.mtu}")
    keys = {n.short: generate_keypair() for n in (a, b)}
    procs: list[Proc] = []
    names = {}
    for n, peer, ip, peer_ip, peer_ep in (
        (a, b, "100.66.0.1", "100.66.0.2", "10.201.0.2"),
        (b, a, "100.66.0.2", "100.66.0.1", "10.201.0.1"),
    ):
        ifname = lab.wg_ifname()
        names[n.short] = ifname
        procs.append(n.spawn("wg-hand", "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", ifname))
        _wait_for(lambda f=ifname: Path(f"/var/run/wireguard/{f}.sock").exists(), "wireguard-go socket")
        keyfile = lab.dir / f"{n.short}.key"
        keyfile.write_text(_b64(keys[n.short][0]))
        keyfile.chmod(0o600)
        n.exec(
            "wg",
            "set",
            ifname,
            "private-key",
            str(keyfile),
            "listen-port",
            "51900",
            "peer",
            _b64(keys[peer.short][1]),
            "endpoint",
            f"{peer_ep}:51900",
            "allowed-ips",
            f"{peer_ip}/32",
            "persistent-keepalive",
            "25",
        )
        n.exec("ip", "addr", "add", f"{ip}/32", "dev", ifname)
        n.exec("ip", "link", "set", ifname, "mtu", str(args.mtu), "up")
        n.exec("ip", "route", "add", f"{peer_ip}/32", "dev", ifname)
    res.dst, res.pids = "100.66.0.2", [p.pid for p in procs]
    return res


def bench_cvlan(lab: Lab, a: Netns, b: Netns, args: argparse.Namespace) -> Result:
    res = Result("CVLAN tunnel", note=f"controller + cvlan-ctrl + cvland (wireguard-go), MTU {args.mtu}")
    # The controller's namespace hangs off a; b reaches it through a (control traffic only). So
    # the only addresses the nodes can report as endpoints sit on the a-b veth or on a itself:
    # whatever candidate a peer picks, the tunnel runs over the same veth as the other paths.
    ns = lab.ns("ctl")
    lab.veth(ns, "to-a", "10.202.1.1/30", a, "to-ctl", "10.202.1.2/30")
    ns.exec("ip", "route", "add", "default", "via", "10.202.1.2")
    a.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    b.exec("ip", "route", "add", "10.202.1.0/30", "via", "10.201.0.1")
    ctl = Controller(lab, ns, lab.dir / "controller", {}).start()
    _, join = ctl.token("bench", "overlay")
    nodes = [start_node(lab, n, f"bench-{n.short}", join) for n in (a, b)]
    for node in nodes:
        node.wait_ready(peers=1, timeout=90)
    pids: list[int] = []
    for node in nodes:
        engine = json.loads((node.dp.state_dir / "run.json").read_text())["pid"]
        pids += [engine, node.dp.proc.pid]
        if node.ctrl is not None:
            pids.append(node.ctrl.pid)
    res.note += f"; endpoints at start a->b {nodes[0].status().peers[0].endpoint}"
    res.note += f", b->a {nodes[1].status().peers[0].endpoint}"
    res.dst, res.pids = nodes[1].address(), pids
    res.after = lambda: (
        f"; at the end a->b {nodes[0].status().peers[0].endpoint}, b->a {nodes[1].status().peers[0].endpoint}"
    )
    return res


def bench_nebula(lab: Lab, a: Netns, b: Netns, args: argparse.Namespace) -> Result:
    res = Result("Nebula 1.6", note=f"Debian package, allow-all firewall, MTU {args.mtu}")
    d = lab.dir / "nebula"
    d.mkdir()
    sh(
        "nebula-cert",
        "ca",
        "-name",
        "cvlan-bench",
        "-out-crt",
        str(d / "ca.crt"),
        "-out-key",
        str(d / "ca.key"),
    )
    procs = []
    for n, ip, lighthouse in ((a, "100.65.0.1", True), (b, "100.65.0.2", False)):
        sh(
            "nebula-cert",
            "sign",
            "-name",
            n.short,
            "-ip",
            f"{ip}/24",
            "-ca-crt",
            str(d / "ca.crt"),
            "-ca-key",
            str(d / "ca.key"),
            "-out-crt",
            str(d / f"{n.short}.crt"),
            "-out-key",
            str(d / f"{n.short}.key"),
        )
        cfg = {
            "pki": {
                "ca": str(d / "ca.crt"),
                "cert": str(d / f"{n.short}.crt"),
                "key": str(d / f"{n.short}.key"),
            },
            "static_host_map": {} if lighthouse else {"100.65.0.1": ["10.201.0.1:4242"]},
            "lighthouse": {"am_lighthouse": lighthouse, "hosts": [] if lighthouse else ["100.65.0.1"]},
            "listen": {"host": "0.0.0.0", "port": 4242},
            "punchy": {"punch": False},
            "tun": {"dev": f"neb{n.short}", "mtu": args.mtu},
            "logging": {"level": "warning"},
            "firewall": {
                "outbound": [{"port": "any", "proto": "any", "host": "any"}],
                "inbound": [{"port": "any", "proto": "any", "host": "any"}],
            },
        }
        (d / f"{n.short}.yml").write_text(json.dumps(cfg))  # YAML is a superset of JSON
        procs.append(n.spawn("nebula", "nebula", "-config", str(d / f"{n.short}.yml")))
    res.dst, res.pids = "100.65.0.2", [p.pid for p in procs]
    return res


def _b64(hexkey: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hexkey)).decode()


def _wait_for(fn: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


# --- report ------------------------------------------------------------------------------------


def write_report(results: list[Result], args: argparse.Namespace, out: Path, started: dt.datetime) -> None:
    out.mkdir(parents=True, exist_ok=True)
    by = {r.path: r for r in results}
    lines = [
        f"# Overlay throughput, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine()}. Versions: {_versions()}.",
        "",
        f"Method: one namespace pair joined by a veth; iperf3 TCP from a to b, {args.seconds} s per run, "
        f"{args.runs} runs per cell, 1 and 4 parallel streams. All four paths are set up side by side on "
        "the same pair and measured interleaved (run 1 of every path, then run 2, ...), so that load "
        "drifting over time hits every path alike. "
        f"Tunnel MTU {args.mtu} everywhere (CVLAN's default). Daemon CPU = user+system time "
        "of the tunnel daemons at both ends during the run, in % of one core (200 % = both cores). "
        "The iperf3 client and server share the same two cores, so every figure is CPU-bound.",
        "",
        "| path | 1 stream, Mbit/s (median) | 4 streams, Mbit/s (median) | daemon CPU 1 / 4 streams | runs (1 stream; 4 streams) | notes |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        runs = "; ".join(", ".join(f"{v:.0f}" for v in r.runs.get(s, [])) for s in STREAMS)
        cpu = " / ".join(f"{r.cpu_median(s):.0f} %" for s in STREAMS) if r.path != "raw veth" else "–"
        lines.append(f"| {r.path} | {r.median(1):.0f} | {r.median(4):.0f} | {cpu} | {runs} | {r.note} |")
    cv, hand = by.get("CVLAN tunnel"), by.get("wireguard-go by hand")
    if cv and hand:
        lines += [
            "",
            "**CVLAN / hand-configured wireguard-go** (goal ≥ 0.95): "
            + ", ".join(
                f"{s} stream{'s' if s > 1 else ''}: **{cv.median(s) / hand.median(s):.2f}**" for s in STREAMS
            )
            + ".",
        ]
    lines += [
        "",
        "![throughput](throughput.png)",
        "",
        "Reproduce (as root): `.venv/bin/python bench/overlay/bench_overlay.py "
        f"--runs {args.runs} --seconds {args.seconds} --mtu {args.mtu}`.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    _plot(results, out / "throughput.png")


def _versions() -> str:
    wg = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True).stdout.split()[1]
    neb = subprocess.run(["nebula", "-version"], capture_output=True, text=True).stdout.split()[-1]
    ip3 = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split()[1]
    return f"wireguard-go {wg}, nebula {neb}, iperf3 {ip3}"


def _plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tunnels = [r for r in results if r.path != "raw veth"]
    raw = next((r for r in results if r.path == "raw veth"), None)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    xs = range(len(tunnels))
    for i, s in enumerate(STREAMS):
        vals = [r.median(s) for r in tunnels]
        lows = [r.median(s) - min(r.runs[s]) for r in tunnels]
        highs = [max(r.runs[s]) - r.median(s) for r in tunnels]
        ax.bar(
            [x + (i - 0.5) * width for x in xs],
            vals,
            width,
            yerr=[lows, highs],
            capsize=3,
            label=f"{s} stream{'s' if s > 1 else ''} (median, min-max)",
        )
    ax.set_xticks(list(xs), [r.path for r in tunnels])
    ax.set_ylabel("Mbit/s")
    title = "iperf3 TCP through each tunnel, one namespace pair"
    if raw is not None:
        title += f"\n(raw veth without tunnel: {raw.median(1):.0f} / {raw.median(4):.0f} Mbit/s)"
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--seconds", type=int, default=5, help="iperf3 duration per run (default 5)")
    p.add_argument("--mtu", type=int, default=1280, help="tunnel MTU for every tunnel (default 1280)")
    p.add_argument("--out", type=Path, help="report directory (default bench/results/overlay-DATE)")
    args = p.parse_args()
    if not (1 <= args.runs <= 20 and 1 <= args.seconds <= 60):
        p.error("--runs must be 1-20 and --seconds 1-60")
    started = dt.datetime.now(dt.UTC)
    out = args.out or Path(__file__).resolve().parents[1] / "results" / f"overlay-{started:%Y-%m-%d}"
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cvlan-bench-") as tmp:
        lab = Lab(Path(tmp))
        try:
            a, b = lab.lan_pair()
            for fn in (bench_raw, bench_hand_wg, bench_cvlan, bench_nebula):
                results.append(fn(lab, a, b, args))
            measure_all(results, a, b, args.runs, args.seconds)
            for r in results:
                r.note += r.after() if r.after else ""
        finally:
            lab.close()
    write_report(results, args, out, started)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
