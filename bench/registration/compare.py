"""Old and new code side by side: registration bursts alternately against a controller run from an
older source tree (`git archive OLD src | tar -x -C DIR`) and from this tree, in one session, each on
a fresh PostgreSQL cluster; then a report with medians and ratios (markdown + PNG).

  .venv/bin/python bench/registration/compare.py --old-src OLD/src --new-src NEW/src --old-label e3c5ce3 \\
      --rounds 2 --nodes 10000 --out bench/results/registration-DATE
  .venv/bin/python bench/registration/compare.py --report-only --out bench/results/registration-DATE
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLEET = 100_000


def run_rounds(args: argparse.Namespace, out: Path) -> None:
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for r in range(args.first_round, args.first_round + args.rounds):
        for label, src in (("old", args.old_src), ("new", args.new_src)):
            path = runs / f"{label}-{r}.json"
            cmd = [
                sys.executable,
                str(HERE / "bench_registration.py"),
                "--nodes",
                str(args.nodes),
                "--json",
                str(path),
            ]
            if src:
                cmd += ["--src", src]
            print(f"round {r}: {label}", flush=True)
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)


def load(out: Path) -> dict[str, list[dict[str, Any]]]:
    got: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for p in sorted((out / "runs").glob("*.json")):
        got[p.name.split("-")[0]].append({**json.loads(p.read_text()), "run": p.stem})
    return got


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(out: Path, old_label: str, notes: Path | None = None) -> None:
    got = load(out)
    old, new = got["old"], got["new"]
    lines = [
        "# Registration burst: before and after group commit",
        "",
        f"Old code: commit `{old_label}`; new code: this commit. Each run: a fresh ephemeral PostgreSQL",
        "cluster (the simulator's tuning), `cvlan-controller serve` pinned to CPU 1 (`taskset -c 1`), one",
        "tenant with one CVLAN and one token per 10 nodes (the simulator's fleet shape), then",
        "`bench/registration/bench_registration.py` on CPU 0 registers the nodes over the controller's",
        "proxy socket (the lean node API server, as behind `cvlan-front`) with 64 registrations in flight:",
        "token + Ed25519 CSR + WireGuard key, as `cvlan-ctrl` sends them. Old and new alternate, in one session.",
        "",
        "CPU per registration is the controller process's own user + system time over the burst divided by",
        "the registrations answered: it does not depend on how much of its core the controller got. The",
        "machine has 2 cores shared with other jobs (1-minute load average at the end of each run below),",
        "so the wall-clock rate is what the controller reached with the share of CPU 1 it got; the",
        "CPU-bound rate (1 / CPU per registration) is what one free core gives.",
        "",
        "| run | code | nodes | ok | errors | wall s | reg/s (wall) | controller CPU ms/reg | reg/s per free core | p50 ms | p99 ms | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in (("old", old), ("new", new)):
        for r in rows:
            lines.append(
                f"| {r['run']} | {label} | {r['nodes']:,} | {r['ok']:,} | {sum(r['errors'].values())} | "
                f"{r['wall_s']:.0f} | {r['per_s']:.0f} | {r['cpu_ms_per_reg']:.2f} | {r['cpu_bound_per_s']:.0f} | "
                f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['load_1m']:.1f} |"
            )
    if old and new:
        co, cn = med(old, "cpu_ms_per_reg"), med(new, "cpu_ms_per_reg")
        wo, wn = med(old, "per_s"), med(new, "per_s")
        lines += [
            "",
            "## Medians",
            "",
            "| | old | new | ratio |",
            "|---|---|---|---|",
            f"| controller CPU per registration | {co:.2f} ms | {cn:.2f} ms | {co / cn:.1f}x less |",
            f"| registrations/s per free core (1 / CPU) | {1e3 / co:.0f} | {1e3 / cn:.0f} | {co / cn:.1f}x |",
            f"| registrations/s reached (wall, shared machine) | {wo:.0f} | {wn:.0f} | {wn / wo:.1f}x |",
            f"| 100,000 registrations on one free core (projected) | {FLEET * co / 1e3 / 60:.1f} min | "
            f"{FLEET * cn / 1e3 / 60:.1f} min | |",
            f"| 100,000 at the wall rate reached here | {FLEET / wo / 60:.1f} min | {FLEET / wn / 60:.1f} min | |",
        ]
    lines += ["", "![CPU per registration and rate per core, old and new](registration.png)"]
    if notes is not None:
        lines += ["", notes.read_text().rstrip()]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    chart(out, old, new)


def chart(out: Path, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((a, "cpu_ms_per_reg", "controller CPU per registration (ms)"),
                           (b, "cpu_bound_per_s", "registrations/s per free core")):  # fmt: skip
        for x, (label, rows) in enumerate((("old", old), ("new", new))):
            vals = [r[key] for r in rows]
            ax.scatter([x] * len(vals), vals, color="C0" if label == "old" else "C2")
            if vals:
                ax.bar(x, statistics.median(vals), alpha=0.3, color="C0" if label == "old" else "C2")
        ax.set_xticks([0, 1], ["old (one transaction each)", "new (group commit)"])
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "registration.png", dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", help="source tree (its src/) of the old commit")
    ap.add_argument("--old-label", default="old", help="what to call the old commit in the report")
    ap.add_argument("--new-src", help="source tree of the new commit (default: this tree)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first-round", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--notes", type=Path, help="markdown appended to the report (profile, findings)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.report_only:
        if not args.old_src:
            ap.error("--old-src is required unless --report-only")
        os.sched_setaffinity(0, {0})
        run_rounds(args, out)
    report(out, args.old_label, args.notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
