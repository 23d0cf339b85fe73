"""Relay benchmark: relay vs direct on the same namespaces in one run, relay CPU per Gbit/s, and idle
relay clients per GB of relay memory.

Part 1 (network namespaces, real wireguard-go, the full stack): a controller and a cvlan-relay on the
fake internet, nodes a and b each behind a port-preserving NAT. First the tunnel runs direct; then
the internet router drops UDP between the two NATs and both nodes are restarted, so the same pair
runs through the relay. For each path: ping RTT (min/avg/max over N pings) and iperf3 TCP throughput
(1 stream, bounded), runs interleaved; relay CPU is sampled during the relayed runs.

Part 2 (loopback): a cvlan-relay process and N idle clients with real controller-issued node
certificates; relay RSS is read at steps of clients and fitted per client.

  .venv/bin/python bench/relay/bench_relay.py [--runs 3] [--seconds 5] [--pings 20] \\
      [--clients 250,500,1000] [--out bench/results/relay-DATE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402
import psutil  # noqa: E402

from bench.common import machine  # noqa: E402
from cvlan.client.relay import RelayClient, ws_url  # noqa: E402
from cvlan.devtools.lab.netns import Lab, Netns  # noqa: E402
from tests.harness.controller import RunningController  # noqa: E402
from tests.harness.relay import Fleet, RunningRelay  # noqa: E402
from tests.harness.relaystack import peer_paths, start_relay  # noqa: E402
from tests.harness.stack import Node, start_controller, start_node, wait_until  # noqa: E402

IPERF_PORT = 5201


def iperf(a: Netns, b: Netns, dst: str, seconds: int) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", b.name, "iperf3", "-s", "-1", "-B", dst, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = a.exec(
            "iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", timeout=seconds + 30
        )
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def ping_rtt(a: Netns, dst: str, count: int) -> dict[str, float]:
    out = a.exec("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", dst, timeout=count + 30)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    loss = re.search(r"([\d.]+)% packet loss", out)
    if not m:
        raise RuntimeError(f"ping {dst}: {out}")
    return {
        "min": float(m[1]),
        "avg": float(m[2]),
        "max": float(m[3]),
        "loss_pct": float(loss[1]) if loss else 0,
    }


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def measure(label: str, a: Node, b: Node, relay_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    dst = b.address()
    res: dict[str, Any] = {"path": label, "mbit": [], "relay_cpu_pct": [], "paths": peer_paths(a)}
    res["rtt"] = ping_rtt(a.ns, dst, args.pings)
    for i in range(args.runs):
        c0, t0 = cpu_s(relay_pid), time.monotonic()
        mbit = iperf(a.ns, b.ns, dst, args.seconds)
        cpu = 100 * (cpu_s(relay_pid) - c0) / (time.monotonic() - t0)
        res["mbit"].append(mbit)
        res["relay_cpu_pct"].append(cpu)
        print(f"  {label:<7} run {i + 1}: {mbit:8.1f} Mbit/s, relay CPU {cpu:5.1f} %", flush=True)
    return res


def part1(args: argparse.Namespace) -> list[dict[str, Any]]:
    lab = Lab()
    try:
        ctl = start_controller(lab, poll_interval_s=2)
        relay = start_relay(lab, ctl)
        assert relay.proc is not None
        _, join = ctl.token("bench", "relay")
        a_ns, a_nat = lab.nat_host("a", "masquerade")
        b_ns, b_nat = lab.nat_host("b", "masquerade")
        a, b = start_node(lab, a_ns, "a", join), start_node(lab, b_ns, "b", join)
        a.wait_ready(peers=1, timeout=90)
        b.wait_ready(peers=1, timeout=90)
        wait_until("direct", lambda: peer_paths(a) == {"b": "direct"} and a.ns.ping(b.address()), 120)
        out = [measure("direct", a, b, relay.proc.pid, args)]
        # Same namespaces, now without a direct path: drop UDP between the two NATs' public addresses.
        a_wan, b_wan = a_nat.ip, b_nat.ip
        lab.internet().exec(
            "nft",
            "-f",
            "-",
            input=(
                "table ip benchblock {\n"
                "  chain block {\n"
                "    type filter hook forward priority filter; policy accept;\n"
                f"    ip saddr {a_wan} ip daddr {b_wan} meta l4proto udp drop\n"
                f"    ip saddr {b_wan} ip daddr {a_wan} meta l4proto udp drop\n"
                "  }\n"
                "}\n"
            ),
        )
        for n in (a, b):
            n.restart(lab)
        a.wait_ready(peers=1, timeout=90)
        b.wait_ready(peers=1, timeout=90)
        wait_until("relay", lambda: peer_paths(a) == {"b": "relay"} and a.ns.ping(b.address()), 60)
        out.append(measure("relay", a, b, relay.proc.pid, args))
        return out
    finally:
        lab.close()


async def part2(args: argparse.Namespace) -> dict[str, Any]:
    steps = [int(x) for x in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="cvlan-bench-relay-"))
    rc = await RunningController(tmp / "ctrl", f"sqlite+aiosqlite:///{tmp / 'c.db'}").start()
    relay = await RunningRelay(rc, tmp / "relay").create()
    assert relay.settings is not None
    env_cmd = [
        str(Path(sys.executable).parent / "cvlan-relay"),
        "--server",
        relay.settings.server,
        "--token",
        relay.settings.token,
        "--ca-pin",
        relay.settings.ca_pin,
        "--listen",
        relay.settings.listen,
        "--stun-listen",
        relay.settings.stun_listen,
        "--state-dir",
        str(relay.state_dir),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(env_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sessions: list[aiohttp.ClientSession] = []
    wss: list[Any] = []
    rows = []
    try:
        await relay.wait_listening(30)
        fleet = await Fleet.create(rc, "bench", [f"idle{i}" for i in range(max(steps) // 250 + 1)])
        p = psutil.Process(proc.pid)
        await asyncio.sleep(1)
        rows.append({"clients": 0, "rss_mib": p.memory_info().rss / 2**20})
        print(f"  idle clients      0: relay RSS {rows[-1]['rss_mib']:7.1f} MiB", flush=True)
        for target in steps:
            while len(wss) < target:
                creds = await fleet.node(f"idle{len(wss) // 250}", f"n{len(wss)}")
                s = aiohttp.ClientSession()
                sessions.append(s)
                wss.append(await s.ws_connect(ws_url(relay.url), ssl=creds.ssl(), heartbeat=None))
            await asyncio.sleep(2)
            rows.append({"clients": target, "rss_mib": p.memory_info().rss / 2**20})
            print(f"  idle clients {target:6d}: relay RSS {rows[-1]['rss_mib']:7.1f} MiB", flush=True)
        blast = await relay_capacity(relay, fleet, p, args.seconds)
    finally:
        for w in wss:
            await w.close()
        for s in sessions:
            await s.close()
        proc.terminate()
        proc.wait(timeout=15)
        await rc.stop()
    base = rows[0]["rss_mib"]
    last = rows[-1]
    per_client_kib = (last["rss_mib"] - base) * 1024 / last["clients"] if last["clients"] else float("nan")
    return {
        "rows": rows,
        "per_client_kib": per_client_kib,
        "clients_per_gib": 2**20 / per_client_kib,
        "blast": blast,
    }


async def relay_capacity(
    relay: RunningRelay, fleet: Fleet, p: psutil.Process, seconds: int
) -> dict[str, float]:
    """Two clients in this process push 1400-byte packets through the relay process for `seconds`:
    relayed throughput and the relay's CPU, without WireGuard or cvland in the path."""
    a, b = await fleet.node("idle0", "blast-a"), await fleet.node("idle0", "blast-b")
    got = [0]
    ca = RelayClient(relay.url, a.ssl(), lambda s, q: None, queue_len=4096, queue_bytes=4096 * 1600).start()
    cb = RelayClient(relay.url, b.ssl(), lambda s, q: got.__setitem__(0, got[0] + 1)).start()
    try:
        await asyncio.wait_for(asyncio.gather(ca.connected.wait(), cb.connected.wait()), 20)
        pkt = bytes(1400)
        c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
        while time.monotonic() - t0 < seconds:
            for _ in range(64):
                ca.send(b.wg_key, pkt)
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        dt = time.monotonic() - t0
        cpu = (sum(p.cpu_times()[:2]) - c0) / dt
        mbit = got[0] * 1400 * 8 / dt / 1e6
        print(
            f"  relay capacity: {mbit:.0f} Mbit/s relayed, relay CPU {100 * cpu:.0f} % of one core",
            flush=True,
        )
        return {"mbit": mbit, "relay_cpu": cpu, "pps": got[0] / dt, "sent": ca.stats.sent}
    finally:
        await ca.close()
        await cb.close()


def report(out: Path, p1: list[dict[str, Any]], p2: dict[str, Any], args: argparse.Namespace) -> None:
    d, r = p1[0], p1[1]
    md = statistics.median
    relay_gbit = md(r["mbit"]) / 1000
    cpu_per_gbit = md(r["relay_cpu_pct"]) / 100 / relay_gbit if relay_gbit > 0 else float("nan")
    lines = [
        f"# Relay benchmark ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Shared with other work while it ran (load average at the end: "
        f"{os.getloadavg()[0]:.1f}); treat figures as one noisy sample.",
        "",
        "Command: `.venv/bin/python bench/relay/bench_relay.py "
        f"--runs {args.runs} --seconds {args.seconds} --pings {args.pings} --clients {args.clients}`",
        "",
        "## Relay vs direct (same namespaces, one run)",
        "",
        "Nodes a and b each behind a port-preserving NAT (nftables masquerade + home-router input drop),",
        "full stack (controller, cvlan-relay, cvlan-ctrl + cvland with wireguard-go). Direct first; then",
        "UDP between the two NATs is dropped at the internet router and both nodes restart, so the",
        "same pair runs through the relay. iperf3 TCP, 1 stream, "
        f"{args.seconds} s per run, {args.runs} runs; ping {args.pings}x every 0.2 s.",
        "",
        "| path | throughput median (runs) Mbit/s | ping RTT min/avg/max ms | loss | relay CPU (% of one core) |",
        "|---|---|---|---|---|",
    ]
    for x in (d, r):
        runs = ", ".join(f"{v:.0f}" for v in x["mbit"])
        rtt = x["rtt"]
        lines.append(
            f"| {x['path']} | **{md(x['mbit']):.0f}** ({runs}) | {rtt['min']:.2f} / {rtt['avg']:.2f} / "
            f"{rtt['max']:.2f} | {rtt['loss_pct']:.0f} % | {md(x['relay_cpu_pct']):.0f} |"
        )
    lines += [
        "",
        f"Relay / direct throughput: **{md(r['mbit']) / md(d['mbit']):.2f}**. "
        f"Relay CPU per Gbit/s relayed: **{cpu_per_gbit:.1f} cores** "
        f"(median relay CPU {md(r['relay_cpu_pct']):.0f} % of one core at {md(r['mbit']):.0f} Mbit/s).",
        "",
        "Direct traffic does not touch the relay (its CPU stays near zero during the direct runs).",
        "",
        "## Relay capacity without WireGuard (loopback)",
        "",
        "Two clients push 1400-byte packets through a cvlan-relay process on loopback (TLS WebSockets),",
        "measuring what the relay forwards and the CPU it spends:",
        "",
        f"* relayed: **{p2['blast']['mbit']:.0f} Mbit/s** ({p2['blast']['pps']:.0f} packets/s), relay CPU "
        f"**{100 * p2['blast']['relay_cpu']:.0f} %** of one core -> "
        f"**{p2['blast']['relay_cpu'] / (p2['blast']['mbit'] / 1000):.1f} cores per Gbit/s** relayed.",
        "",
        "## Idle relay clients per GB",
        "",
        "A cvlan-relay process on loopback; idle WebSocket clients, each with its own controller-issued",
        "node certificate (revocation-checked at connect). Relay RSS after each step:",
        "",
        "| clients | relay RSS MiB |",
        "|---|---|",
    ]
    lines += [f"| {row['clients']} | {row['rss_mib']:.1f} |" for row in p2["rows"]]
    lines += [
        "",
        f"Memory per idle client: **{p2['per_client_kib']:.0f} KiB** -> about "
        f"**{p2['clients_per_gib']:,.0f} idle clients per GiB** of relay memory (RSS, Python 3.11, aiohttp).",
        "",
        "## Notes",
        "",
        "* The relay is one Python process (asyncio + aiohttp); every relayed packet is a WebSocket",
        "  message over TLS, so relay throughput is bounded by one core. More relays per region, or",
        "  several processes behind one address, scale it out.",
        "* wireguard-go itself is the other bound on this 2-vCPU box (see bench/results/overlay-*).",
        "* The relayed path adds three Python hops (cvland proxy on a, the relay, cvland proxy on b).",
        "  On a loaded machine each hop waits for a CPU, so relayed throughput follows the load more",
        "  than direct does: an earlier run the same day at load average 15 gave 4 Mbit/s relayed with",
        "  the relay at 5 % CPU and no drops anywhere (UDP iperf through the relay lost 9 % at 20 Mbit/s",
        "  and 67 % at 50 Mbit/s, with the relay's drop counters at zero: the loss is on the nodes).",
        "* CPU per Gbit/s is extrapolated from tens of Mbit/s: at 2.5-4 cores per Gbit/s one relay",
        "  process saturates at roughly 250-400 Mbit/s of relayed traffic.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"part1": p1, "part2": p2}, indent=1))
    print(f"wrote {out / 'report.md'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--clients", default="250,500,1000")
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/relay-{dt.date.today().isoformat()}"))
    ap.add_argument("--skip-netns", action="store_true", help="only part 2 (idle clients)")
    args = ap.parse_args()
    p2 = asyncio.run(part2(args))
    p1 = [] if args.skip_netns else part1(args)
    if p1:
        report(args.out, p1, p2, args)
    else:
        print(json.dumps(p2, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
