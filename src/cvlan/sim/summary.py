"""A run's figures from its per-second timeline: one summary per phase, the registration, the
propagation of changes, and one row per minute."""

from __future__ import annotations

from typing import Any

from cvlan.sim.churn import Propagation, propagation
from cvlan.sim.config import RunConfig
from cvlan.sim.drive import Recorder, Second
from cvlan.sim.metrics import Histogram, Interval


def _avg(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


def summarize(cfg: RunConfig, rec: Recorder) -> dict[str, Any]:
    """Timeline rows and one summary per phase (histograms merged over the phase)."""
    timeline: list[dict[str, Any]] = []
    phases: dict[str, dict[str, Any]] = {}
    acc: dict[str, tuple[Interval, list[Second]]] = {}
    for k in sorted(rec.secs):
        s = rec.secs[k]
        iv = s.iv
        timeline.append(
            {
                "t": k,
                "phase": s.phase,
                "ok": dict(iv.ok),
                "errors": dict(iv.errors),
                "error_samples": iv.samples,
                "register": iv.hist["register"].summary(),
                "poll": iv.hist["poll"].summary(),
                "answer": iv.hist["answer"].summary(),
                "gauges": s.gauges,
                "procs": s.procs,
                "load1": s.load1,
            }
        )
        a = acc.setdefault(s.phase, (Interval(), []))
        a[0].merge(iv)
        a[1].append(s)
    for name, (iv, secs) in acc.items():
        span = next((p for p in rec.phase_spans if p["phase"] == name), {})
        dur = len(secs)
        comps = sorted({c for s in secs for c in s.procs})
        usage = {}
        for c in comps:
            cpus = [s.procs[c]["cpu"] for s in secs if c in s.procs]
            mems = [s.procs[c]["rss_mb"] for s in secs if c in s.procs]
            usage[c] = {
                "cpu_avg": round(sum(cpus) / len(cpus), 1) if cpus else 0.0,
                "cpu_max": max(cpus, default=0.0),
                "rss_mb_max": max(mems, default=0.0),
                "rss_mb_end": mems[-1] if mems else 0.0,
                "runq_wait": _avg([s.procs[c].get("runq_wait_ms") for s in secs if c in s.procs]),
            }
            for extra in ("softirq", "steal"):
                if any(extra in s.procs.get(c, {}) for s in secs):
                    usage[c][f"{extra}_avg"] = _avg([s.procs[c].get(extra) for s in secs if c in s.procs])
        phases[name] = {
            "long": bool(cfg.long_poll_s),
            "seconds": dur,
            "poll_rate_target": span.get("poll_rate"),
            "ok": dict(iv.ok),
            "errors": dict(iv.errors),
            "error_samples": iv.samples,
            "rates": {op: round(n / dur, 1) if dur else 0.0 for op, n in iv.ok.items()},
            "latency_ms": {op: h.summary() for op, h in iv.hist.items() if h.n},
            "usage": usage,
        }
    # The fleet's registration: nodes that join later (churn) register in the steady state.
    reg_secs = [t for t in timeline if t["ok"].get("register") and t["phase"] == "register"]
    reg_total = sum(t["ok"].get("register", 0) for t in reg_secs)
    first = reg_secs[0]["t"] if reg_secs else 0
    last = reg_secs[-1]["t"] if reg_secs else 0
    all_reg = Histogram()
    for s in rec.secs.values():
        if s.phase == "register":
            all_reg.merge(s.iv.hist["register"])
    # Changes made in the last seconds before the drain may still be on their way: left out (a plain
    # poll may take a whole interval to ask).
    tail = PROPAGATION_TAIL_S + (0.0 if cfg.long_poll_s else cfg.poll_interval_s * (1 + cfg.jitter))
    prop = propagation(rec.changes, rec.receipts, rec.memberships(), rec.record_end - tail)
    return {
        "propagation": _propagation_view(prop, rec.t0),
        "minutes": _minutes(rec, prop),
        "registration": {
            "nodes": cfg.nodes,
            "registered": reg_total,
            "seconds": last - first + 1 if reg_secs else 0,
            "rate": round(reg_total / (last - first + 1), 1) if reg_secs else 0.0,
            "latency_ms": all_reg.summary(),
        },
        "phase_summary": phases,
        "timeline": timeline,
    }


PROPAGATION_TAIL_S = 5.0
"""Changes committed in the last seconds before the drain are left out: they may still be on their way."""
MINUTE_OPS = ("poll", "answer", "held_excess", "vrouter_poll", "restart")


def _hist_view(values: list[float]) -> dict[str, float]:
    h = Histogram()
    for v in values:
        h.record(v)
    return h.summary()


def _propagation_view(prop: Propagation, t0: float) -> dict[str, Any]:
    """Propagation over the run and by kind of change, in milliseconds; the changes that did not reach
    every member, with the first few of them."""
    kinds = sorted({o.change.kind for o in prop.outcomes})
    by_kind = {
        k: _hist_view([o.seconds for o in prop.outcomes if o.change.kind == k and o.seconds is not None])
        for k in kinds
    }
    return {
        "changes": len(prop.outcomes),
        "all_ms": _hist_view(prop.reached),
        "by_kind_ms": by_kind,
        "count_by_kind": {k: sum(1 for o in prop.outcomes if o.change.kind == k) for k in kinds},
        "not_reached": len(prop.not_reached),
        "not_reached_samples": [
            {
                "kind": o.change.kind,
                "cvlan": o.change.cvlan,
                "t": round(o.change.committed - t0, 1),
                "missing": o.missing,
            }
            for o in prop.not_reached[:10]
        ],
        "members_mean": round(sum(o.members for o in prop.outcomes) / len(prop.outcomes), 1)
        if prop.outcomes
        else 0,
    }


def _minutes(rec: Recorder, prop: Propagation) -> list[dict[str, Any]]:
    """One row per minute of the run: latency percentiles, counts, errors, load, CPU and memory."""
    rows: dict[int, dict[str, Any]] = {}
    for k in sorted(rec.secs):
        s = rec.secs[k]
        m = rows.setdefault(k // 60, {"iv": Interval(), "secs": [], "phase": s.phase})
        m["iv"].merge(s.iv)
        m["secs"].append(s)
    props: dict[int, list[float]] = {}
    for o in prop.outcomes:
        if o.seconds is not None:
            props.setdefault(int(o.change.committed - rec.t0) // 60, []).append(o.seconds)
    out = []
    for minute, m in sorted(rows.items()):
        iv: Interval = m["iv"]
        secs: list[Second] = m["secs"]
        comps = sorted({c for x in secs for c in x.procs})
        out.append(
            {
                "minute": minute,
                "phase": m["phase"],
                "latency_ms": {
                    op: iv.hist[op].summary() for op in MINUTE_OPS if op in iv.hist and iv.hist[op].n
                },
                "propagation_ms": _hist_view(props.get(minute, [])),
                "ok": dict(iv.ok),
                "errors": dict(iv.errors),
                "load1": _avg([x.load1 for x in secs]),
                "cpu": {c: _avg([x.procs[c]["cpu"] for x in secs if c in x.procs]) for c in comps},
                "rss_mb": {c: _avg([x.procs[c]["rss_mb"] for x in secs if c in x.procs]) for c in comps},
                "connected": secs[-1].gauges.get("connected", 0),
            }
        )
    return out
