"""`cvlan-sim report`: results.json -> report.md with PNG graphs and a projected infrastructure cost.

A run's results are two files: results.json (the figures: configuration, phases, per-phase summary)
and timeline.jsonl.gz (one JSON object per second, gzip'd). Older runs kept the timeline inside
results.json; load_results reads both forms."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

from cvlan.sim import report_churn

# Projection assumptions: on-demand list prices (USD per hour, AWS us-east-1, Linux) at the time of
# writing. They are inputs to a back-of-envelope estimate, not quotes; check current prices.
INSTANCES = {
    "controller": ("c6i.xlarge", 4, 8, 0.17),
    "database": ("r6i.large", 2, 16, 0.126),
}
HOURS_PER_MONTH = 730
HEADROOM = 2.0
"""Provision twice the measured steady-state CPU: bursts, restarts (reconnect storms), failover."""

CRITERIA = {"poll_p99_ms": 50.0, "controller_rss_mb": 2048.0, "machine_cpu_share": 0.5}


RESULTS = "results.json"
TIMELINE = "timeline.jsonl.gz"


def save_results(results_dir: Path, data: dict[str, Any]) -> Path:
    """Write data's per-second timeline to TIMELINE and everything else to RESULTS; return RESULTS."""
    summary = {k: v for k, v in data.items() if k != "timeline"}
    with gzip.open(results_dir / TIMELINE, "wt", encoding="utf-8") as f:
        for second in data.get("timeline", []):
            f.write(json.dumps(second, separators=(",", ":"), default=str) + "\n")
    path = results_dir / RESULTS
    path.write_text(json.dumps(summary, indent=1, default=str))
    return path


def load_results(results_dir: Path) -> dict[str, Any]:
    """A run's results with its timeline, from either form (see the module docstring)."""
    data: dict[str, Any] = json.loads((results_dir / RESULTS).read_text())
    if (results_dir / TIMELINE).exists():
        with gzip.open(results_dir / TIMELINE, "rt", encoding="utf-8") as f:
            data["timeline"] = [json.loads(line) for line in f if line.strip()]
    return data


def write_report(results_dir: Path, notes: str = "") -> Path:
    data = load_results(results_dir)
    graphs = _graphs(results_dir, data)
    out = results_dir / "report.md"
    out.write_text(render(data, graphs, notes))
    return out


def latency_op(ph: dict[str, Any]) -> str:
    """The latency a phase is judged by: "answer" in a long-polling fleet (held long-polls are waiting,
    not latency; report_churn.py), "poll" otherwise."""
    return "answer" if ph.get("latency_ms", {}).get("answer", {}).get("n") and ph.get("long") else "poll"


def _steady(data: dict[str, Any]) -> dict[str, Any]:
    return dict(data["phase_summary"].get("steady", {}))


def _fmt(v: float) -> str:
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def render(data: dict[str, Any], graphs: list[str], notes: str) -> str:
    cfg = data["config"]
    st = _steady(data)
    reg = data["registration"]
    lines = [f"# CVLAN load run: {cfg['nodes']:,} simulated nodes", ""]
    lines += _headline(data, st, reg)
    if notes.strip():
        lines += ["## Findings", "", notes.strip(), ""]
    lines += _knee(data)
    lines += report_churn.sections(data)
    lines += _usage_table(st, "the steady state")
    lines += _usage_table(data["phase_summary"].get("register", {}), "the registration phase")
    lines += _nodes_table(data)
    lines += _errors(data)
    lines += ["## Graphs", ""]
    if graphs:
        lines += [
            "Shaded: the registration phase (blue), the steady state and the knee steps (green, each "
            "labelled with its target polls/s); the unshaded gaps before the steady state and "
            "between knee steps are unmeasured settling time.",
            "",
        ]
    lines += [f"![{g}]({g})" for g in graphs] + [""]
    lines += _cost(data, st)
    lines += _config(data)
    return "\n".join(lines) + "\n"


FRONTS = {"haproxy": "HAProxy", "cvlan-front": "cvlan-front"}
"""The components that are a TLS front (the sampler's names), and how the report names them."""


def _front(usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, figures) of the run's TLS front in a usage or sample dict; ("", {}) if it had none."""
    for key, name in FRONTS.items():
        if key in usage:
            return name, usage[key]
    return "", {}


def _headline(data: dict[str, Any], st: dict[str, Any], reg: dict[str, Any]) -> list[str]:
    cfg = data["config"]
    lat = st.get("latency_ms", {}).get(latency_op(st), {})
    rl = reg["latency_ms"]
    usage = st.get("usage", {})
    polls = st.get("rates", {}).get("poll", 0.0)
    target = st.get("poll_rate_target") or cfg["nodes"] / cfg["poll_interval_s"]
    span: dict[str, Any] = next((p for p in data.get("phases", []) if p["phase"] == "steady"), {})
    active = int(span.get("nodes", cfg["nodes"]))
    errs = sum(st.get("errors", {}).values())
    ctl = usage.get("controller", {})
    fname, fr = _front(usage)
    out = [
        "## Result",
        "",
        f"* Fleet: {cfg['tenants']} tenants x {cfg['cvlans_per_tenant']} CVLANs x {cfg['nodes_per_cvlan']} "
        f"nodes = **{cfg['nodes']:,} nodes**, each with its own WireGuard key, TLS key, certificate and "
        f"mutual-TLS keep-alive connection; TLS front: {data.get('stack', {}).get('front', 'none')}.",
        f"* Registration: **{reg['registered']:,} nodes in {reg['seconds']:,} s ({reg['rate']:,.0f}/s)**, "
        f"offered at {cfg['reg_rate']:g}/s; latency from the scheduled time p50 {rl['p50']:.1f} ms, "
        f"p99 {rl['p99']:.1f} ms, max {rl['max']:.1f} ms.",
        f"* Steady state with {active:,} connected nodes: {st.get('seconds', 0)} s at "
        f"**{polls:,.0f} polls/s** (target "
        f"{target:,.0f}/s: {active / target:.3g} s interval, "
        f"+-{cfg['jitter']:.0%} jitter); {_what(st)} latency p50 {lat.get('p50', 0):.2f} ms, "
        f"p90 {lat.get('p90', 0):.2f}, **p99 {lat.get('p99', 0):.2f} ms, "
        f"p99.9 {lat.get('p999', 0):.2f} ms**, max {lat.get('max', 0):.1f} ms; "
        f"**{errs} errors**." + _settle_note(data),
        f"* Controller: CPU {ctl.get('cpu_avg', 0):.0f} % of one core on average "
        f"(max {ctl.get('cpu_max', 0):.0f} %), "
        f"RSS up to {ctl.get('rss_mb_max', 0):,.0f} MB"
        + (
            f"; {fname}: CPU {fr.get('cpu_avg', 0):.0f} %, RSS up to {fr.get('rss_mb_max', 0):,.0f} MB."
            if fr
            else "."
        ),
    ]
    if not st:
        reg_cpu = data["phase_summary"].get("register", {}).get("usage", {}).get("controller", {})
        out[-2:] = [
            "* **Steady state: not reached** (the run ended during registration; see the findings).",
            f"* Controller during registration: CPU {reg_cpu.get('cpu_avg', 0):.0f} % of one core on "
            "average.",
        ]
        return out + [""]
    out += [
        "",
        "Sprint criteria (steady state):",
        "",
        "| criterion | target | measured | met |",
        "|---|---|---|---|",
    ]
    p99 = lat.get("p99", math.inf)
    mem = ctl.get("rss_mb_max", 0) + fr.get("rss_mb_max", 0)
    pg = usage.get("postgresql", {}).get("rss_mb_max", 0)
    cores = data["machine"]["cores"] or 2
    ours = sum(u["cpu_avg"] for k, u in usage.items() if k not in ("machine", "simulator"))
    share = ours / (100 * cores)
    out += [
        f"| {_what(st)} p99 | < 50 ms | {p99:.2f} ms | {'yes' if p99 < CRITERIA['poll_p99_ms'] else 'no'} |",
        f"| controller memory (incl. TLS front) | < 2 GB | {mem:,.0f} MB | "
        f"{'yes' if mem < CRITERIA['controller_rss_mb'] else 'no'} |",
        f"| all server processes (with PostgreSQL) | < 2 GB | {mem + pg:,.0f} MB | "
        f"{'yes' if mem + pg < CRITERIA['controller_rss_mb'] else 'no'} |",
        f"| server CPU (controller + front + PostgreSQL) | < 50 % of the machine | {share:.0%} | "
        f"{'yes' if share < CRITERIA['machine_cpu_share'] else 'no'} |",
        "",
    ]
    return out


def _settle_note(data: dict[str, Any]) -> str:
    """The unmeasured minute(s) before the steady state, with their own figures: not hidden."""
    settle = data["config"].get("steady_settle_s")
    ph = data["phase_summary"].get("settle-steady")
    if not settle or not ph:
        return ""
    lat = ph.get("latency_ms", {}).get("poll", {})
    return (
        f" Measured after {settle:g} s at the steady rate (phase settle-steady: the switch from the "
        f"registration phase's interval, every node's first poll at the new rate; "
        f"{ph.get('rates', {}).get('poll', 0.0):,.0f} polls/s, p50 {lat.get('p50', 0):.2f} ms, "
        f"p99 {lat.get('p99', 0):.2f} ms, {sum(ph.get('errors', {}).values())} errors)."
    )


def _knee(data: dict[str, Any]) -> list[str]:
    rows = [
        (name, ph)
        for name, ph in data["phase_summary"].items()
        if name == "steady" or name.startswith("knee-")
    ]
    if len(rows) < 2:
        return []
    out = [
        "## Capacity knee",
        "",
        "The poll rate was changed by changing every node's interval (each node's next poll is drawn "
        "again within the new interval, so the fleet is at the new rate at once); each step is "
        "measured on its own"
        + (
            f", after {settle:g} s at its rate unmeasured, so that a backlog from the step before "
            "does not count against it."
            if (settle := data["config"].get("knee_settle_s"))
            else "."
        ),
        "",
        "| step | target polls/s | achieved polls/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | "
        "controller CPU % | front CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    knee = 0.0
    for name, ph in rows:
        lat = ph.get("latency_ms", {}).get("poll", {})
        u = ph.get("usage", {})
        target = ph.get("poll_rate_target") or 0.0
        achieved = ph.get("rates", {}).get("poll", 0.0)
        errs = sum(ph.get("errors", {}).values())
        if lat.get("p99", math.inf) < 50 and achieved >= 0.95 * target and not errs:
            knee = max(knee, achieved)
        out.append(
            f"| {name} | {target:,.0f} | {achieved:,.0f} | {lat.get('p50', 0):.2f} | "
            f"{lat.get('p99', 0):.2f} | {lat.get('p999', 0):.2f} | {lat.get('max', 0):.1f} | {errs} | "
            f"{u.get('controller', {}).get('cpu_avg', 0):.0f} | "
            f"{_front(u)[1].get('cpu_avg', 0):.0f} |"
        )
    out += ["", f"Highest measured rate with p99 < 50 ms and no errors: **{knee:,.0f} polls/s**.", ""]
    return out


def _usage_table(st: dict[str, Any], what: str) -> list[str]:
    usage = st.get("usage", {})
    if not usage:
        return []
    out = [
        f"## CPU and memory in {what}",
        "",
        "CPU in % of one core (the machine has 200 %); PostgreSQL memory counts shared buffers once. "
        "'machine' is the whole box, including other users of this shared machine. "
        "'Waiting for a CPU' is the run-queue delay from /proc/PID/schedstat: how long per second the "
        "component's processes were ready to run while the cores ran something else.",
        "",
        "| component | CPU avg % | CPU max % | RSS max MB | RSS at end MB | waiting for a CPU, ms/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, u in usage.items():
        out.append(
            f"| {name} | {u['cpu_avg']:.1f} | {u['cpu_max']:.1f} | {_fmt(u['rss_mb_max'])} | "
            f"{_fmt(u['rss_mb_end'])} | {u['runq_wait'] if u.get('runq_wait') is not None else '-'} |"
        )
    m = usage.get("machine", {})
    if m.get("softirq_avg") is not None:
        out += [
            "",
            f"Of the machine's CPU, {m['softirq_avg']:.1f} % went to softirq (packet processing no "
            f"process is charged for) and {m.get('steal_avg') or 0:.1f} % was stolen by the hypervisor.",
        ]
    return out + [""]


def _nodes_table(data: dict[str, Any]) -> list[str]:
    t = data.get("postgresql_nodes_table")
    if not t or not t.get("updates"):
        return []
    hot = t["hot_updates"] / t["updates"]
    return [
        "## The nodes table at the end of the run",
        "",
        f"{t['updates']:,} row updates (liveness written back in batches), {hot:.0%} of them heap-only "
        f"(no index touched); autovacuum ran {t['autovacuums']} times, {t['dead_rows']:,} dead rows left; "
        f"table {t['table_mb']:,.1f} MB, indexes {t['indexes_mb']:,.1f} MB"
        + (f"; storage options: {t['options']}." if t.get("options") else "."),
        "",
    ]


def _errors(data: dict[str, Any]) -> list[str]:
    out = [
        "## Requests and errors by phase",
        "",
        "| phase | seconds | requests ok | errors |",
        "|---|---:|---|---|",
    ]
    for name, ph in data["phase_summary"].items():
        ok = ", ".join(f"{k} {v:,}" for k, v in sorted(ph.get("ok", {}).items()))
        errs = ", ".join(f"{k} {v:,}" for k, v in sorted(ph.get("errors", {}).items())) or "none"
        out.append(f"| {name} | {ph['seconds']} | {ok} | {errs} |")
    samples: dict[str, str] = {}
    for ph in data["phase_summary"].values():
        for k, v in ph.get("error_samples", {}).items():
            samples.setdefault(k, v)
    if samples:
        out += ["", "First message seen for each error kind:", ""]
        out += [f"* `{k}`: {' '.join(v.split()) or '(no body)'}" for k, v in sorted(samples.items())]
    return out + [""]


def _memory_growth(data: dict[str, Any], fallback_mb: float, nodes: int) -> tuple[float, float]:
    """(base MB, KB per connected node) of controller + TLS front, from the registration ramp."""

    def mem(r: dict[str, Any]) -> float:
        p = r.get("procs", {})
        return float(p.get("controller", {}).get("rss_mb", 0) + _front(p)[1].get("rss_mb", 0))

    rows = [r for r in data["timeline"] if r.get("gauges", {}).get("connected") and r.get("procs")]
    if len(rows) >= 2:
        a = rows[0]
        b = max(rows, key=lambda r: r["gauges"]["connected"])
        dn = b["gauges"]["connected"] - a["gauges"]["connected"]
        if dn > 0:
            slope = max(0.0, (mem(b) - mem(a)) * 1024 / dn)
            return mem(a) - slope / 1024 * a["gauges"]["connected"], slope
    return 0.0, fallback_mb * 1024 / max(nodes, 1)


def _what(ph: dict[str, Any]) -> str:
    return "ordinary answer" if latency_op(ph) == "answer" else "poll"


def _healthy(ph: dict[str, Any]) -> bool:
    p99 = ph.get("latency_ms", {}).get(latency_op(ph), {}).get("p99", math.inf)
    return bool(p99 < CRITERIA["poll_p99_ms"] and not sum(ph.get("errors", {}).values()))


def _cost(data: dict[str, Any], st: dict[str, Any]) -> list[str]:
    # Project from the healthy steady or knee phase with the highest poll rate: fixed per-process
    # costs make a low-rate phase overstate the cost per poll.
    candidates = [
        ph
        for name, ph in data["phase_summary"].items()
        if (name == "steady" or name.startswith("knee-")) and _healthy(ph)
    ]
    if candidates:
        st = max(candidates, key=lambda ph: ph.get("rates", {}).get("poll", 0.0))
    usage = st.get("usage", {})
    nodes = data["config"]["nodes"]
    if not usage or not nodes:
        return []
    caveat = []
    if not _healthy(st):
        if not data.get("minutes"):
            return [
                "## Projected infrastructure cost",
                "",
                "Not projected from this run: its steady state was not healthy (poll p99 over 50 ms or "
                "errors), so its CPU figures do not say what the load costs.",
                "",
            ]
        caveat = [
            "The steady state missed its latency goal or had errors (see above), on a machine shared "
            "with other work: the CPU it measured is what the load took there, so the projection below "
            "is an estimate from a contended run, not from a healthy one.",
            "",
        ]
    front = _front(usage)[1]
    ctl_cpu = usage.get("controller", {}).get("cpu_avg", 0) + front.get("cpu_avg", 0)
    ctl_mem = usage.get("controller", {}).get("rss_mb_max", 0) + front.get("rss_mb_max", 0)
    db_cpu = usage.get("postgresql", {}).get("cpu_avg", 0)
    base_mb, slope_kb = _memory_growth(data, ctl_mem, nodes)
    cname, ccores, cmem, cprice = INSTANCES["controller"]
    dname, dcores, dmem, dprice = INSTANCES["database"]
    out = [
        "## Projected infrastructure cost",
        "",
        "Assumptions: CPU scales linearly with the poll rate (nodes / 30 s) and memory with the number of "
        f"nodes, from this run's healthy phase with the highest poll rate "
        f"({st.get('rates', {}).get('poll', 0):,.0f} polls/s); memory = measured base + measured growth "
        f"per connected node ({slope_kb:.0f} KB) x nodes; {HEADROOM:g}x headroom on CPU and 1.25x on memory; "
        f"controllers (with their TLS front) on {cname} ({ccores} vCPU, {cmem} GiB, ${cprice}/h), PostgreSQL "
        f"on {dname} ({dcores} vCPU, {dmem} GiB, ${dprice}/h), on-demand list prices (AWS us-east-1, "
        f"Linux), {HOURS_PER_MONTH} h/month, at least 2 controllers and 1 database for availability; one "
        "vCPU counted as one core of this machine. Storage, traffic and replicas are not included.",
        "",
        *caveat,
        "| nodes | controller cores | controller instances | DB instances | USD/month | "
        "USD per 1k nodes/month |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    rate = st.get("rates", {}).get("poll", 0.0) or 1.0
    for n in (100_000, 1_000_000, 10_000_000):
        f = n / 30.0 / rate
        cores = ctl_cpu / 100 * f * HEADROOM
        mem_gb = (base_mb + slope_kb / 1024 * n) / 1024 * 1.25
        ctl_n = max(2, math.ceil(cores / ccores), math.ceil(mem_gb / cmem))
        db_n = max(1, math.ceil(db_cpu / 100 * f * HEADROOM / dcores))
        usd = (ctl_n * cprice + db_n * dprice) * HOURS_PER_MONTH
        out.append(f"| {n:,} | {cores:.1f} | {ctl_n} | {db_n} | {usd:,.0f} | {usd / (n / 1000):.2f} |")
    return out + [""]


def _config(data: dict[str, Any]) -> list[str]:
    cfg = data["config"]
    m = data["machine"]
    stack = data.get("stack", {})
    args = (
        f"cvlan-sim run --tenants {cfg['tenants']} --cvlans-per-tenant {cfg['cvlans_per_tenant']} "
        f"--nodes-per-cvlan {cfg['nodes_per_cvlan']} --reg-rate {cfg['reg_rate']:g} "
        f"--steady {cfg['steady_s']:g} "
        f"--poll-interval {cfg['poll_interval_s']:g} --workers {cfg['workers']} --front {cfg['front']}"
        f" --reg-concurrency {cfg.get('reg_concurrency', 16)}"
    )
    if not cfg.get("long_poll_s", 30):
        args += " --poll-mode plain"
    if churn := cfg.get("churn"):
        args += (
            f" --churn-restart {churn['restart']:g} --churn-endpoint {churn['endpoint']:g}"
            f" --churn-join {churn['join']:g} --churn-delete {churn['delete']:g}"
            f" --churn-policy-every {churn['admin_every_s']:g}"
            f" --regions {cfg.get('regions', 1)} --vrouter-cvlans {cfg.get('vrouter_cvlans', 0)}"
        )
    if cfg.get("front_restart_at"):
        args += f" --front-restart-at {cfg['front_restart_at']:g}"
        if cfg.get("front_down_s"):
            args += f" --front-down {cfg['front_down_s']:g}"
    if cfg.get("steady_rate"):
        args += f" --steady-rate {cfg['steady_rate']:g}"
    if cfg.get("steady_settle_s"):
        args += f" --steady-settle {cfg['steady_settle_s']:g}"
    if cfg.get("knee_rates"):
        rates = ",".join(f"{r:g}" for r in cfg["knee_rates"])
        args += f" --knee-rates {rates} --knee-step {cfg['knee_step_s']:g}"
        if cfg.get("knee_settle_s"):
            args += f" --knee-settle {cfg['knee_settle_s']:g}"
    out = [
        "## Configuration and machine",
        "",
        f"Command: `{args}`",
        "",
        f"* Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, {m['os']}, "
        f"kernel {m['kernel']}, Python {m['python']}. Load average at start: {m['load_avg_at_start']}.",
        "* The machine is shared: other engineers ran their test suites during the run, so 'machine' CPU "
        "in the graphs includes work that is not part of this run, and latencies are upper bounds.",
        "* Everything ran on this one machine: controller, PostgreSQL, TLS front and the simulator, over "
        "loopback.",
        f"* Stack: {json.dumps(stack, sort_keys=True)}",
        f"* Code: {data.get('code') or 'not recorded'} (the controller ran from this tree).",
        f"* Provisioning: {json.dumps(data.get('provision', {}), sort_keys=True)}",
        "* Phases (seconds from the start of registration): "
        + "; ".join(
            f"{p['phase']} {p['start']:.0f}-{(p['end'] if p['end'] is not None else p['start']):.0f}"
            for p in data.get("phases", [])
        ),
        "",
    ]
    return out


def _graphs(results_dir: Path, data: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = data["timeline"]
    if not tl:
        return []
    t = [r["t"] for r in tl]
    names: list[str] = []

    def shade(ax: Any) -> None:
        for p in data.get("phases", []):
            if p["phase"] in ("register", "steady") or p["phase"].startswith("knee-"):
                end = p["end"] if p["end"] is not None else t[-1]
                ax.axvspan(p["start"], end, alpha=0.06, color="C0" if p["phase"] == "register" else "C2")
                # Knee steps are short and close together: label them with their rate only.
                label = p["phase"].removeprefix("knee-")
                ax.text(p["start"], 1.0, label, transform=ax.get_xaxis_transform(), fontsize=7, va="top")

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(results_dir / name, dpi=90)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(t, [r["ok"].get("register", 0) for r in tl], label="registrations/s", lw=0.8)
    ax.plot(t, [r["ok"].get("poll", 0) for r in tl], label="polls/s", lw=0.8)
    ax.plot(t, [r["ok"].get("connect", 0) for r in tl], label="connections/s", lw=0.8)
    ax.plot(t, [sum(r["errors"].values()) for r in tl], label="errors/s", lw=0.8, color="red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    ax.legend(loc="upper left", fontsize=8)
    shade(ax)
    save(fig, "rates.png")

    fig, ax = plt.subplots(figsize=(10, 3.6))
    for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
        ax.plot(t, [r["poll"][key] or float("nan") for r in tl], label=f"poll {label}", lw=0.8)
    ax.plot(t, [r["register"]["p99"] or float("nan") for r in tl], label="register p99", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms from scheduled send time")
    ax.axhline(50, color="grey", lw=0.6, ls=":")
    ax.legend(loc="upper left", fontsize=8)
    shade(ax)
    save(fig, "latency.png")

    comps = sorted({c for r in tl for c in r["procs"]})
    for metric, label, fname in (("cpu", "CPU % of one core", "cpu.png"), ("rss_mb", "RSS MB", "memory.png")):
        fig, ax = plt.subplots(figsize=(10, 3.6))
        for c in comps:
            ax.plot(t, [r["procs"].get(c, {}).get(metric, float("nan")) for r in tl], label=c, lw=0.8)
        ax.set_xlabel("seconds")
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize=8)
        shade(ax)
        save(fig, fname)
    report_churn.graphs(results_dir, data, save)
    return names
