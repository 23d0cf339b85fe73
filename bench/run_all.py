"""Run every benchmark under bench/ one after another, each with its defaults; each prints its figures
and writes its report under bench/results/. The fleet load runs (cvlan-sim run) are not included:
they take from minutes to an hour; see docs/SIMULATION.md.

  .venv/bin/python bench/run_all.py [--only NAME[,NAME...]] [--list]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "mgmt": HERE / "mgmt" / "bench_mgmt_api.py",
    "nodeapi": HERE / "nodeapi" / "bench_nodeapi.py",
    "health": HERE / "nodeapi" / "bench_health_flush.py",
    "ui": HERE / "ui" / "bench_ui_pages.py",
    "front": HERE / "front" / "bench_front_memory.py",
    "overlay": HERE / "overlay" / "bench_overlay.py",
    "relay": HERE / "relay" / "bench_relay.py",
    "vrouter": HERE / "vrouter" / "bench_vrouter.py",
}
"""Loopback benchmarks first; the network-namespace ones (root, wireguard-go) after."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    args = ap.parse_args()
    if args.list:
        for name, path in BENCHES.items():
            print(f"{name:8s} {path.relative_to(HERE.parent)}")
        return 0
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    failed = []
    for name in names:
        print(f"== {name}: {BENCHES[name].relative_to(HERE.parent)}", flush=True)
        t = time.monotonic()
        rc = subprocess.run([sys.executable, str(BENCHES[name])], cwd=HERE.parent).returncode
        print(f"== {name}: exit {rc} after {time.monotonic() - t:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
