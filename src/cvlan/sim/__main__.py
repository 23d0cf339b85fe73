"""cvlan-sim: simulated fleet, bulk provisioning, load runs and their reports."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from pathlib import Path

from cvlan.common import adminconf
from cvlan.common.version import add_version_flag
from cvlan.sim.provision import Plan, ProvisionError, provision
from cvlan.wire.peerhealth import REPORT_INTERVAL_S

PROG = "cvlan-sim"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {v:g}")
    return v


def _non_negative_float(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v:g}")
    return v


def _rates(text: str) -> list[float]:
    return [_positive_float(x) for x in text.split(",") if x.strip()]


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenants", type=_positive_int, default=10, help="tenants (default 10)")
    p.add_argument(
        "--cvlans-per-tenant", type=_positive_int, default=10, help="CVLANs per tenant (default 10)"
    )
    p.add_argument("--nodes-per-cvlan", type=_positive_int, default=10, help="nodes per CVLAN (default 10)")


def _share(text: str) -> float:
    v = _non_negative_float(text)
    if v > 0.1:
        raise argparse.ArgumentTypeError(f"a share of the fleet per second, at most 0.1, got {v:g}")
    return v


def _churn_args(r: argparse.ArgumentParser) -> None:
    g = r.add_argument_group(
        "churn in the steady state (shares of the fleet per second; 0 turns one off; docs/SIMULATION.md)"
    )
    g.add_argument("--churn-restart", type=_share, default=0.0001, help="nodes restarting (default 0.0001)")
    g.add_argument(
        "--churn-endpoint", type=_share, default=0.0001, help="nodes changing endpoint (default 0.0001)"
    )
    g.add_argument("--churn-join", type=_share, default=0.00002, help="new nodes joining (default 0.00002)")
    g.add_argument("--churn-delete", type=_share, default=0.00002, help="nodes deleted (default 0.00002)")
    g.add_argument(
        "--churn-policy-every",
        type=_non_negative_float,
        default=10.0,
        help="one CVLAN's policy replaced every S seconds, fleet-wide (default 10; 0: never)",
    )
    g.add_argument("--regions", type=_positive_int, default=2, help="regions, one vrouter each (default 2)")
    g.add_argument(
        "--vrouter-cvlans",
        type=int,
        default=1,
        help="CVLANs per tenant served by a vrouter, which the run simulates (default 1; 0: none)",
    )
    g.add_argument(
        "--no-policies",
        action="store_true",
        help="no policy on the CVLANs (default: a policy on every CVLAN)",
    )


def scale_name(nodes: int) -> str:
    """100000 -> "100k", 1000 -> "1k", 1500 -> "1500"."""
    if nodes >= 1000 and nodes % 1000 == 0:
        return f"{nodes // 1000}k"
    return str(nodes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_version_flag(p)
    sub = p.add_subparsers(dest="cmd", required=True)

    pv = sub.add_parser(
        "provision",
        help="create tenants, CVLANs and enrollment tokens over the management API",
        description="Create (idempotently; resumable after an interruption) a region and a vrouter "
        "placeholder, TENANTS tenants named sim-tNNNN, CVLANS-PER-TENANT CVLANs each and one enrollment "
        "token per CVLAN good for NODES-PER-CVLAN registrations. Token texts are kept in "
        "WORK_DIR/tokens.json (mode 0600).",
    )
    _plan_args(pv)
    pv.add_argument("--admin-conf", type=Path, required=True, help="the controller's admin.conf")
    pv.add_argument("--work-dir", type=Path, default=Path("sim-work"), help="where tokens.json is kept")
    pv.add_argument("--concurrency", type=_positive_int, default=16, help="requests in flight (default 16)")
    pv.add_argument("--token-ttl", default="7d", help="enrollment token lifetime (default 7d)")
    pv.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser(
        "run",
        help="a load run: controller on PostgreSQL, provisioning, registration, steady state",
        description="Start an ephemeral PostgreSQL cluster and a controller (or use --server), provision, "
        "register the fleet at --reg-rate, hold the steady state for --steady, optionally step the poll "
        "rate through --knee-rates, and write results.json into the results directory.",
    )
    _plan_args(r)
    r.add_argument("--reg-rate", type=_positive_float, default=200.0, help="registrations/s (default 200)")
    r.add_argument("--steady", type=_positive_float, default=600.0, help="steady-state seconds (default 600)")
    r.add_argument("--poll-interval", type=_positive_float, default=30.0, help="seconds (default 30)")
    r.add_argument(
        "--steady-rate",
        type=_positive_float,
        default=0.0,
        help="polls/s to hold in the steady state (shortens every node's interval); default: nodes/interval",
    )
    r.add_argument(
        "--reg-concurrency", type=_positive_int, default=16, help="registrations in flight (default 16)"
    )
    r.add_argument(
        "--poll-mode",
        choices=("long", "plain"),
        default="long",
        help="long: poll as cvlan-ctrl does, a long-poll asked again as soon as it is answered (default); "
        "plain: a poll every --poll-interval, the request rate set by the interval",
    )
    r.add_argument(
        "--long-poll",
        type=_positive_int,
        default=30,
        help="seconds a long-poll asks to be held (default 30, as cvlan-ctrl)",
    )
    r.add_argument("--jitter", type=float, default=0.1, help="poll interval jitter fraction (default 0.1)")
    r.add_argument("--workers", type=_positive_int, default=1, help="fleet processes (default 1)")
    r.add_argument(
        "--front",
        choices=("none", "cvlan", "haproxy"),
        default="none",
        help="TLS front for the node API: cvlan (cvlan-front) or haproxy (default none: nodes talk to "
        "the controller's own TLS)",
    )
    r.add_argument(
        "--front-restart-at",
        type=_non_negative_float,
        default=0.0,
        help="kill cvlan-front this many seconds into the steady state and start it again: every node "
        "connection drops at once and the fleet reconnects with the agent's backoff (default 0: never)",
    )
    r.add_argument(
        "--front-down",
        type=_non_negative_float,
        default=0.0,
        help="with --front-restart-at: seconds cvlan-front stays down before it is started again (an "
        "outage rather than a crash and an immediate restart; default 0)",
    )
    r.add_argument("--server", default="", help="use this running controller instead of starting one")
    r.add_argument("--admin-conf", type=Path, help="admin.conf of --server")
    r.add_argument("--knee-rates", type=_rates, default=[], help="poll rates to step through, e.g. 5000,6600")
    r.add_argument(
        "--knee-step", type=_positive_float, default=60.0, help="seconds per knee step (default 60)"
    )
    r.add_argument(
        "--steady-settle",
        type=_non_negative_float,
        default=0.0,
        help="seconds the steady rate runs unmeasured after registration before the steady state is "
        "measured (phase settle-steady, reported on its own; default 0)",
    )
    r.add_argument(
        "--knee-settle",
        type=_non_negative_float,
        default=0.0,
        help="seconds each knee rate runs unmeasured before its step, so a backlog left by the step "
        "before does not count against it (default 0)",
    )
    _churn_args(r)
    r.add_argument("--renew-after", type=float, default=0.0, help="renew certificates after S seconds")
    r.add_argument(
        "--report-interval",
        type=_non_negative_float,
        default=REPORT_INTERVAL_S,
        help="seconds between a node's looks at whether its peers' health is due for a report, as "
        "cvlan-ctrl --report-interval (a report when the health changed, else every 5 minutes; "
        f"default {REPORT_INTERVAL_S:g}; 0: never)",
    )
    r.add_argument("--reg-timeout", type=_positive_float, default=3600.0, help="registration phase limit (s)")
    r.add_argument("--work-dir", type=Path, default=Path("sim-work"), help="scratch directory")
    r.add_argument("--results", type=Path, help="results directory (default bench/results/<date>-<scale>)")
    r.add_argument("--quiet", action="store_true", help="no progress output")

    rp = sub.add_parser(
        "report",
        help="write report.md and PNG graphs from a run's results.json",
        description="Read RESULTS/results.json and write RESULTS/report.md with graphs (PNG) and a "
        "projected infrastructure cost.",
    )
    rp.add_argument("results", type=Path, help="results directory (holding results.json)")
    rp.add_argument("--notes", type=Path, help="markdown to include as 'Findings' (bottlenecks, fixes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "provision":
            return _provision(args)
        if args.cmd == "run":
            return _run(args)
        return _report(args)
    except (adminconf.AdminConfError, ProvisionError, ValueError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1


def _provision(args: argparse.Namespace) -> int:
    try:
        plan = Plan(args.tenants, args.cvlans_per_tenant, args.nodes_per_cvlan)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    conf = adminconf.load(args.admin_conf)
    summary, store = asyncio.run(
        provision(conf, plan, args.work_dir, args.concurrency, args.token_ttl, quiet=args.quiet)
    )
    for line in summary.lines():
        print(line)
    print(f"tokens for {len(store.for_plan(plan))} CVLANs in {store.path} (mode 0600)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from cvlan.sim.churn import ChurnConfig
    from cvlan.sim.run import RunConfig, RunError, run

    if args.front_restart_at and args.front != "cvlan":
        print(f"{PROG}: --front-restart-at needs --front cvlan", file=sys.stderr)
        return 2
    if args.server and not args.admin_conf:
        print(f"{PROG}: --server needs --admin-conf", file=sys.stderr)
        return 2
    try:
        Plan(args.tenants, args.cvlans_per_tenant, args.nodes_per_cvlan)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    nodes = args.tenants * args.cvlans_per_tenant * args.nodes_per_cvlan
    results = args.results or Path("bench/results") / f"{dt.date.today():%Y-%m-%d}-{scale_name(nodes)}"
    cfg = RunConfig(
        tenants=args.tenants,
        cvlans_per_tenant=args.cvlans_per_tenant,
        nodes_per_cvlan=args.nodes_per_cvlan,
        work_dir=args.work_dir.resolve(),
        results_dir=results,
        reg_rate=args.reg_rate,
        steady_s=args.steady,
        poll_interval_s=args.poll_interval,
        jitter=args.jitter,
        workers=args.workers,
        front=args.front,
        server=args.server,
        admin_conf=args.admin_conf,
        knee_rates=args.knee_rates,
        steady_rate=args.steady_rate,
        reg_concurrency=args.reg_concurrency,
        knee_step_s=args.knee_step,
        steady_settle_s=args.steady_settle,
        knee_settle_s=args.knee_settle,
        renew_after_s=args.renew_after,
        long_poll_s=args.long_poll if args.poll_mode == "long" else 0,
        report_interval_s=args.report_interval,
        reg_timeout_s=args.reg_timeout,
        quiet=args.quiet,
        churn=ChurnConfig(
            restart=args.churn_restart,
            endpoint=args.churn_endpoint,
            join=args.churn_join,
            delete=args.churn_delete,
            admin_every_s=args.churn_policy_every,
        ),
        regions=args.regions,
        vrouter_cvlans=max(0, args.vrouter_cvlans),
        policies=not args.no_policies,
        front_restart_at=args.front_restart_at,
        front_down_s=args.front_down,
    )
    # A SIGTERM (e.g. from `timeout`) must still stop the controller, PostgreSQL and the workers.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        path = asyncio.run(run(cfg))
    except RunError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(f"results: {path}")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report(args: argparse.Namespace) -> int:
    from cvlan.sim.report import write_report

    src = args.results / "results.json"
    if not src.exists():
        print(f"{PROG}: no results.json in {args.results}", file=sys.stderr)
        return 2
    notes = args.notes.read_text() if args.notes else ""
    out = write_report(args.results, notes)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
