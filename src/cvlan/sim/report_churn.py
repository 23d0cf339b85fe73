"""The parts of a run's report about a long-polling fleet under churn: propagation of changes, the
minute-by-minute table, memory over the steady state, the simulated vrouters, and their graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROPAGATION_GOAL_MS = 1000.0
ANSWER_GOAL_MS = 50.0


def sections(data: dict[str, Any]) -> list[str]:
    """Markdown for the sections this run has data for (none for runs made before churn existed)."""
    out: list[str] = []
    out += _front_restart(data)
    out += _propagation(data)
    out += _answers(data)
    out += _vrouters(data)
    out += _memory_slope(data)
    out += _minutes(data)
    return out


def _ms(h: dict[str, Any], key: str) -> str:
    return f"{h.get(key, 0):,.1f}" if h.get("n") else "-"


RECOVERY_WINDOW_S = 120


def _front_restart(data: dict[str, Any]) -> list[str]:
    """How the fleet came back after cvlan-front was killed (--front-restart-at): connections per
    second, errors by kind, and when every node that was connected before was connected again."""
    tl = data.get("timeline", [])
    at = next((i for i, r in enumerate(tl) if r["ok"].get("front_restart")), None)
    if at is None:
        return []
    before = max((r["gauges"].get("connected", 0) for r in tl[max(0, at - 5) : at - 1]), default=0)
    window = tl[max(0, at - 2) : at + RECOVERY_WINDOW_S]
    # The gauges come a second late: the fleet is down from the first second under half of it.
    down = next((i for i, r in enumerate(window) if r["gauges"].get("connected", 0) < before / 2), 0)
    back_row = next((r for r in window[down:] if r["gauges"].get("connected", 0) >= before), None)
    back = f"{back_row['t'] - tl[at]['t']} s" if back_row else f"more than {RECOVERY_WINDOW_S} s"
    peak = max(window, key=lambda r: r["ok"].get("connect", 0))
    outage = data.get("config", {}).get("front_down_s", 0)
    down_s = f" {outage:g} s later" if outage else ""
    errors: dict[str, int] = {}
    for r in window:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return [
        "## Crash of the front and the reconnects",
        "",
        f"At {tl[at]['t']} s the run killed cvlan-front (SIGKILL to its process group) and started it "
        f"again{down_s}: {before:,} node connections dropped at once. Each node waits cvlan-ctrl's backoff "
        "(common.backoff: a ceiling of 0.5 s doubling to 30 s, each delay drawn anywhere below it) before "
        "its next round, and a refused or failed connection is a failed round.",
        "",
        f"* every node connected again after **{back}**; "
        f"at most {peak['ok'].get('connect', 0):,} new connections in one second (at {peak['t']} s), "
        f"{before / max(1, peak['ok'].get('connect', 0)):.1f}x fewer than the fleet;",
        "* errors in the two minutes after the crash, by kind: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(errors.items())) or "none")
        + ".",
        "",
    ]


def _met(h: dict[str, Any], goal_ms: float) -> str:
    return "met" if h.get("n") and h.get("p99", 1e9) <= goal_ms else "missed"


def _propagation(data: dict[str, Any]) -> list[str]:
    prop = data.get("propagation")
    if not prop or not prop.get("changes"):
        return []
    cfg = data["config"]
    churn = cfg.get("churn", {})
    a = prop["all_ms"]
    out = [
        "## Churn and propagation",
        "",
        f"Churn in the steady state, shares of the fleet per second: restarts {churn.get('restart', 0):g}, "
        f"endpoint changes {churn.get('endpoint', 0):g}, joins {churn.get('join', 0):g}, deletions "
        f"{churn.get('delete', 0):g}; a policy replaced every {churn.get('admin_every_s', 0):g} s "
        "fleet-wide. Propagation of a change: from when the request that made it was sent until every "
        "member of its CVLAN (when it was committed) held a map version that carries it "
        "(cvlan/sim/churn.py). Restarts change no map: they are timed from the restart to the "
        "node's full map (the `restart` row of the minute table).",
        "",
        f"**{prop['changes']:,} changes, p50 {_ms(a, 'p50')} ms, p99 {_ms(a, 'p99')} ms, "
        f"max {_ms(a, 'max')} ms; {prop['not_reached']} did not reach every member** "
        f"(goal p99 <= {PROPAGATION_GOAL_MS:,.0f} ms: {_met(a, PROPAGATION_GOAL_MS)}); "
        f"{prop.get('members_mean', 0)} members per changed CVLAN on average.",
        "",
        "| change | count | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, h in prop["by_kind_ms"].items():
        n = prop["count_by_kind"].get(kind, 0)
        out.append(f"| {kind} | {n:,} | {_ms(h, 'p50')} | {_ms(h, 'p99')} | {_ms(h, 'max')} |")
    if prop.get("not_reached_samples"):
        out += ["", "Changes that did not reach every member (first ten):", ""]
        out += [
            f"* {s['kind']} in CVLAN {s['cvlan']} at {s['t']} s: {s['missing']} members never held it"
            for s in prop["not_reached_samples"]
        ]
    return out + [""]


def _answers(data: dict[str, Any]) -> list[str]:
    st = data["phase_summary"].get("steady", {})
    lat = st.get("latency_ms", {})
    if "answer" not in lat or not data["config"].get("long_poll_s"):
        return []
    a, h = lat["answer"], lat.get("held_excess", {})
    return [
        "## Ordinary answers in a long-polling fleet",
        "",
        "A long-poll is held until the map changes or the hold ends, so its latency is mostly waiting. "
        "What a node waits for when it needs an answer is measured apart: `answer` is every request "
        "the controller answers at once (discover, report, renewal, and polls sent with a version the "
        "node knows is stale: after registration or a restart, or carrying a new endpoint), and "
        "`held excess` is how much longer than its hold an unchanged long-poll took.",
        "",
        f"Steady state: answers p50 {_ms(a, 'p50')} ms, **p99 {_ms(a, 'p99')} ms**, p99.9 "
        f"{_ms(a, 'p999')} ms, max {_ms(a, 'max')} ms over {a.get('n', 0):,} answers (goal p99 <= "
        f"{ANSWER_GOAL_MS:g} ms: {_met(a, ANSWER_GOAL_MS)}); held "
        f"excess p50 {_ms(h, 'p50')} ms, p99 {_ms(h, 'p99')} ms over {h.get('n', 0):,} long-polls.",
        "",
    ]


def _vrouters(data: dict[str, Any]) -> list[str]:
    vrs = data.get("vrouters")
    if not vrs:
        return []
    st = data["phase_summary"].get("steady", {})
    ok = st.get("ok", {})
    lat = st.get("latency_ms", {}).get("vrouter_poll", {})
    out = [
        "## Simulated vrouters",
        "",
        "Each region has a vrouter; the run registers it with its bootstrap token and long-polls its "
        "desired state (POST /v1/vrouter/poll, 25 s holds, one request per connection) as cvlan-vrouter "
        "does, without WireGuard or nftables.",
        "",
        "| vrouter | CVLANs served | members in its state |",
        "|---|---:|---:|",
    ]
    out += [f"| {v['name']} | {v['cvlans']:,} | {v['members']:,} |" for v in vrs]
    out += [
        "",
        f"Steady state: {ok.get('vrouter_poll', 0):,} polls, {ok.get('vrouter_state', 0):,} new states "
        f"received; poll p50 {_ms(lat, 'p50')} ms, p99 {_ms(lat, 'p99')} ms (held polls included).",
        "",
    ]
    return out


def slope_mb_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if not var:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / var * 3600


def _memory_slope(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data.get("timeline", []) if r.get("phase") == "steady" and r.get("procs")]
    if len(rows) < 120:
        return []
    comps = sorted({c for r in rows for c in r["procs"]} - {"machine"})
    out = [
        "## Memory over the steady state",
        "",
        "RSS per component at the start and end of the steady state and its least-squares slope over "
        "it (a leak shows as a steady positive slope; the fleet's size changes a little with joins "
        "and deletions).",
        "",
        "| component | RSS at start MB | RSS at end MB | slope MB/hour | CPU avg % |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in comps:
        pts = [(float(r["t"]), float(r["procs"][c]["rss_mb"])) for r in rows if c in r["procs"]]
        cpus = [float(r["procs"][c]["cpu"]) for r in rows if c in r["procs"]]
        if not pts:
            continue
        out.append(
            f"| {c} | {pts[0][1]:,.0f} | {pts[-1][1]:,.0f} | {slope_mb_per_hour(pts):+,.1f} | "
            f"{sum(cpus) / len(cpus):.1f} |"
        )
    return out + [""]


def _minutes(data: dict[str, Any]) -> list[str]:
    mins = [m for m in data.get("minutes", []) if m["phase"] not in ("register", "done")]
    if not mins:
        return []
    out = [
        "## Minute by minute",
        "",
        "Per minute of the run after registration: long-polls answered and their latency (mostly the "
        "hold), ordinary answers (see above) p50/p99/p99.9, held excess p99, propagation of the "
        "changes committed in that minute, errors, the machine's one-minute load average (the "
        "machine is shared and has 2 cores: above 2, work waited for a core), and CPU (% of one "
        "core) of the controller, the front and PostgreSQL. Latencies in ms.",
        "",
        "| min | phase | polls | long-poll p50 | p99 | p99.9 | answer p50 | p99 | p99.9 | held excess p99 | "
        "changes | prop p50 | p99 | max | errors | load | ctl % | front % | PG % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in mins:
        lat = m["latency_ms"]
        lp, a, h, p = (
            lat.get("poll", {}),
            lat.get("answer", {}),
            lat.get("held_excess", {}),
            m["propagation_ms"],
        )
        cpu = m["cpu"]
        front = cpu.get("cvlan-front", cpu.get("haproxy"))
        out.append(
            f"| {m['minute']} | {m['phase']} | {m['ok'].get('poll', 0):,} | {_ms(lp, 'p50')} | "
            f"{_ms(lp, 'p99')} | {_ms(lp, 'p999')} | {_ms(a, 'p50')} | {_ms(a, 'p99')} | {_ms(a, 'p999')} | "
            f"{_ms(h, 'p99')} | {p.get('n', 0)} | {_ms(p, 'p50')} | {_ms(p, 'p99')} | {_ms(p, 'max')} | "
            f"{sum(m['errors'].values())} | {m['load1'] or 0:.1f} | {cpu.get('controller') or 0:.0f} | "
            f"{front or 0:.0f} | {cpu.get('postgresql') or 0:.0f} |"
        )
    return out + [""]


def graphs(results_dir: Path, data: dict[str, Any], save: Any) -> None:
    """propagation.png and minutes.png (answer latency, load average) when the run has minutes."""
    import matplotlib.pyplot as plt

    mins = [m for m in data.get("minutes", []) if m["phase"] not in ("register", "done")]
    if len(mins) < 2:
        return
    x = [m["minute"] for m in mins]
    nan = float("nan")
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
        ax.plot(x, [m["propagation_ms"].get(key) or nan for m in mins], label=f"propagation {label}", lw=0.9)
    ax.axhline(PROPAGATION_GOAL_MS, color="grey", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("minute of the run")
    ax.set_ylabel("ms until every member held it")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "propagation.png")

    fig, ax = plt.subplots(figsize=(10, 3.6))
    for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
        ax.plot(
            x,
            [m["latency_ms"].get("answer", {}).get(key) or nan for m in mins],
            label=f"answer {label}",
            lw=0.9,
        )
    ax.axhline(ANSWER_GOAL_MS, color="grey", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("minute of the run")
    ax.set_ylabel("ms")
    ax2 = ax.twinx()
    ax2.plot(x, [m["load1"] or nan for m in mins], color="black", lw=0.7, ls="--", label="load average")
    ax2.set_ylabel("machine load average (2 cores)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    save(fig, "minutes.png")
