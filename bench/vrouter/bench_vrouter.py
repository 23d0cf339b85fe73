"""Traffic split between the direct mesh and the vrouters, read from WireGuard counters.

Two regions (east, west), one vrouter each, one mesh CVLAN served by both; nodes are placed in a
region by the region: tag of their enrollment token. A workload of ping flows (equal volume each)
is drawn so that a chosen share of flows cross regions (default 20 %). The split is then measured
twice, from counters only:

* at the nodes: bytes each node's WireGuard sent to member peers (direct) vs to its vrouter peer;
* at the vrouters: bytes they received from nodes (every byte that took the vrouter path enters
  exactly one vrouter from a node), as a cross-check.

  .venv/bin/python bench/vrouter/bench_vrouter.py [--east 3] [--west 2] [--flows 20] [--cross 0.2]
      [--pings 20] [--size 1200] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import machine  # noqa: E402
from cvlan.devtools.lab.netns import Lab  # noqa: E402
from cvlan.wire.keys import parse_key, public_of  # noqa: E402
from tests.harness.stack import Node, start_controller, start_node  # noqa: E402
from tests.harness.vrouterstack import (  # noqa: E402
    RunningVrouter,
    attach,
    cvlan_with_token,
    start_vrouter,
)

Counters = dict[str, tuple[int, int]]


def node_counters(n: Node) -> dict[str, tuple[int, int]]:
    """Peer name -> (rx, tx) bytes of the node's WireGuard device."""
    return {p.name: (p.rx_bytes, p.tx_bytes) for p in n.status().peers}


def vrouter_rx_from_nodes(v: RunningVrouter, other_vrouter_keys: set[str]) -> int:
    return sum(rx for k, (rx, _) in v.counters().items() if k not in other_vrouter_keys)


def run(args: argparse.Namespace, lab: Lab) -> dict[str, object]:
    ctl = start_controller(lab)
    east = start_vrouter(lab, ctl, "vr-east", "east")
    west = start_vrouter(lab, ctl, "vr-west", "west")
    joins = {r: cvlan_with_token(ctl, "bench", "office", "mesh", region=r) for r in ("east", "west")}
    attach(ctl, "bench", "office", "vr-east")
    attach(ctl, "bench", "office", "vr-west")
    nodes: dict[str, tuple[Node, str]] = {}
    for region, count in (("east", args.east), ("west", args.west)):
        for i in range(count):
            name = f"{region[0]}{i}"
            nodes[name] = (start_node(lab, lab.public_host(name), name, joins[region]), region)
    total = args.east + args.west
    for n, _ in nodes.values():
        n.wait_ready(peers=total, timeout=120)  # total-1 members + own vrouter
    east.wait_served(cvlans=1, served=args.east, peers=args.east + 1, timeout=120)
    west.wait_served(cvlans=1, served=args.west, peers=args.west + 1, timeout=120)
    pairs = list(itertools.permutations(nodes, 2))
    same = [p for p in pairs if nodes[p[0]][1] == nodes[p[1]][1]]
    cross = [p for p in pairs if nodes[p[0]][1] != nodes[p[1]][1]]
    rng = random.Random(args.seed)
    n_cross = round(args.flows * args.cross)
    flows = [rng.choice(cross) for _ in range(n_cross)] + [
        rng.choice(same) for _ in range(args.flows - n_cross)
    ]
    for a, b in flows:  # warm up every path (handshakes) before counting
        if not nodes[a][0].ns.wait_ping(nodes[b][0].address(), timeout=45):
            raise RuntimeError(f"{a} cannot reach {b}")
    vr_keys = {str(public_of(parse_key((v.state_dir / "wg.key").read_text()))) for v in (east, west)}
    before_nodes = {name: node_counters(n) for name, (n, _) in nodes.items()}
    before_vr = {v.name: vrouter_rx_from_nodes(v, vr_keys) for v in (east, west)}
    for a, b in flows:
        src, dst = nodes[a][0], nodes[b][0]
        r = src.ns.run(
            "ping",
            "-n",
            "-q",
            "-c",
            str(args.pings),
            "-i",
            "0.05",
            "-s",
            str(args.size),
            dst.address(),
            timeout=args.pings + 30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"flow {a}->{b} lost packets: {r.stdout}")
    direct = via = 0
    for name, (n, _) in nodes.items():
        now = node_counters(n)
        for peer, (_, tx) in now.items():
            sent = tx - before_nodes[name].get(peer, (0, 0))[1]
            if peer in ("vr-east", "vr-west"):
                via += sent
            else:
                direct += sent
    vr_in = sum(vrouter_rx_from_nodes(v, vr_keys) - before_vr[v.name] for v in (east, west))
    return {
        "nodes": f"{args.east} east + {args.west} west",
        "flows": f"{len(flows)} ({n_cross} cross-region), {args.pings} pings of {args.size} B each",
        "direct": direct,
        "via": via,
        "vrouter_in": vr_in,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--east", type=int, default=3, help="nodes in region east (default 3)")
    p.add_argument("--west", type=int, default=2, help="nodes in region west (default 2)")
    p.add_argument("--flows", type=int, default=20, help="ping flows (default 20)")
    p.add_argument("--cross", type=float, default=0.2, help="share of cross-region flows (default 0.2)")
    p.add_argument("--pings", type=int, default=20, help="pings per flow (default 20)")
    p.add_argument("--size", type=int, default=1200, help="ICMP payload bytes (default 1200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help="report directory (default bench/results/vrouter-DATE)")
    args = p.parse_args()
    if not (2 <= args.east <= 8 and 1 <= args.west <= 8 and 1 <= args.flows <= 200 and 0 <= args.cross <= 1):
        p.error("--east 2-8, --west 1-8, --flows 1-200, --cross 0-1")
    if not (1 <= args.pings <= 100 and 56 <= args.size <= 1300):
        p.error("--pings 1-100, --size 56-1300")
    started = dt.datetime.now(dt.UTC)
    out = args.out or Path(__file__).resolve().parents[1] / "results" / f"vrouter-{started:%Y-%m-%d}"
    with tempfile.TemporaryDirectory(prefix="cvlan-bench-") as tmp:
        lab = Lab(Path(tmp))
        try:
            res = run(args, lab)
        finally:
            lab.close()
    direct, via, vr_in = int(str(res["direct"])), int(str(res["via"])), int(str(res["vrouter_in"]))
    total = direct + via
    lines = [
        "# Direct mesh vs vrouter traffic split (WireGuard counters)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Command: `{' '.join(['.venv/bin/python bench/vrouter/bench_vrouter.py', *sys.argv[1:]])}`",
        "",
        f"Topology: 2 regions, one vrouter each, one mesh CVLAN; nodes {res['nodes']}.",
        f"Workload: {res['flows']}; the cross-region share of flows was set to {args.cross:.0%}.",
        "",
        "| measured at | direct bytes | via vrouter bytes | via share |",
        "|---|---:|---:|---:|",
        f"| nodes (tx to member peers / to vrouter peer) | {direct} | {via} | {via / total:.1%} |",
        f"| vrouters (rx from nodes) | | {vr_in} | {vr_in / total:.1%} |",
        "",
        "Counters include WireGuard's 32-byte data overhead per packet and any keepalives during the run.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
