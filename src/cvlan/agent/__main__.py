"""cvlan-ctrl: the CVLAN node agent (unprivileged). Enrols the node with the controller, keeps its
identity in STATE_DIR/state.db, polls for its peer map and hands it to cvland."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from cvlan.agent import join
from cvlan.agent.daemon import Agent, FatalError, Options
from cvlan.agent.state import StateError
from cvlan.common import log as cvlog
from cvlan.common.metrics import MetricsListener, MetricsListenError
from cvlan.common.version import add_version_flag
from cvlan.wire.routes import RouteError, parse_routes

log = logging.getLogger("cvlan.agent")

DEFAULT_STATE = Path("/var/lib/cvlan-ctrl")
DEFAULT_SOCKET = Path("/run/cvland/cvland.sock")
DEFAULT_METRICS = "127.0.0.1:9372"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvlan-ctrl",
        description=__doc__,
        epilog="On a packaged host, join once with `cvlan-ctrl join --server URL --ca-pin PIN "
        "--token-file FILE` (see `cvlan-ctrl join --help`): it writes the identity and starts the services. "
        "Run directly, the first start takes --server, --token and --ca-pin; later starts need no flags "
        "but --state-dir if not the default.",
    )
    add_version_flag(p)
    p.add_argument("--server", help="controller URL, e.g. https://ctl.example.net:8443")
    p.add_argument(
        "--token",
        help="enrollment token: at the first start, or to re-authenticate as the same node after the "
        "certificate expired (without one it asks a tenant admin to approve); '-' reads it from stdin",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"read the enrollment token from FILE (or set {join.TOKEN_ENV}); keeps it out of ps",
    )
    p.add_argument("--ca-pin", help="sha256:HEX fingerprint of the controller CA (first start only)")
    p.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE, help=f"identity directory (default {DEFAULT_STATE})"
    )
    p.add_argument(
        "--cvland-socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"cvland's IPC socket (default {DEFAULT_SOCKET})",
    )
    p.add_argument("--hostname", default="", help="node name to ask for (default: this machine's hostname)")
    p.add_argument(
        "--listen-port", type=int, default=51820, help="WireGuard UDP port cvland uses (default 51820)"
    )
    p.add_argument(
        "--long-poll",
        type=int,
        default=30,
        metavar="SECONDS",
        help="hold each poll up to this long for changes (default 30; 0 = plain polling)",
    )
    p.add_argument(
        "--enrol-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up enrolling after this long if the controller is unreachable (default 60)",
    )
    p.add_argument(
        "--report-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often denied flows are reported to the controller (default 10)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help=f"Prometheus /metrics listener, or off (default {DEFAULT_METRICS}; if that port is taken, "
        "cvlan-ctrl runs without metrics and says so)",
    )
    p.add_argument(
        "--advertise-routes",
        action="append",
        default=[],
        metavar="CIDR[,CIDR...]",
        help="subnets behind this node its peers may reach through it, once a tenant admin approves them "
        "(`cvlan route approve`); repeat or separate with commas (docs/ROUTES.md)",
    )
    p.add_argument(
        "--advertise-exit-node",
        action="store_true",
        help="offer this node as an exit node for its peers' internet traffic, once approved "
        "(docs/EXIT-NODES.md)",
    )
    cvlog.add_flags(p, defaults=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["join"]:
        return join_main(argv[1:])
    args = parser().parse_args(argv)
    if not 0 < args.listen_port < 65536 or not 0 <= args.long_poll <= 60:
        print("cvlan-ctrl: --listen-port must be 1-65535 and --long-poll 0-60", file=sys.stderr)
        return 2
    try:
        routes = tuple(parse_routes(args.advertise_routes))
    except RouteError as e:
        print(f"cvlan-ctrl: --advertise-routes: {e}", file=sys.stderr)
        return 2
    cvlog.setup(args.log_level, args.log_format)
    token = args.token
    if token == "-" or args.token_file is not None or (token is None and os.environ.get(join.TOKEN_ENV)):
        try:
            token = join.read_token(args, sys.stdin, dict(os.environ))
        except join.JoinError as e:
            print(f"cvlan-ctrl: {e.message}", file=sys.stderr)
            return e.status
    opts = Options(
        server=args.server,
        token=token,
        ca_pin=args.ca_pin,
        state_dir=args.state_dir,
        cvland_socket=args.cvland_socket,
        hostname=args.hostname,
        listen_port=args.listen_port,
        long_poll_s=args.long_poll,
        enrol_timeout_s=args.enrol_timeout,
        report_interval_s=max(1.0, args.report_interval),
        advertise_routes=routes,
        advertise_exit_node=args.advertise_exit_node,
    )
    try:
        return asyncio.run(_run(opts, args.metrics_listen))
    except KeyboardInterrupt:
        return 0


def join_main(argv: list[str]) -> int:
    """`cvlan-ctrl join`: one line on stdout when the node is online, else one line on stderr."""
    ns = join.parser().parse_args(argv)
    cvlog.setup("error", "text")  # join's outcome is its one last line
    try:
        req = join.request_from(ns, sys.stdin, dict(os.environ))
        ident = asyncio.run(join.join(req))
    except join.JoinError as e:
        print(f"cvlan-ctrl join: {e.message}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    where = f"in CVLAN {ident.cvlan_name}, overlay address {join.host_address(ident)}"
    print(f"joined: node {ident.node_name} is online {where}")
    return 0


async def _run(opts: Options, metrics_listen: str | None = None) -> int:
    """Run the agent until SIGTERM; metrics_listen None means the default address (a taken port is
    then only a warning), a value the operator gave must work."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(opts)
    metrics = MetricsListener(agent.metrics.registry)
    try:
        await metrics.start(metrics_listen or DEFAULT_METRICS, required=metrics_listen is not None)
        await agent.run(stop)
    except MetricsListenError as e:
        print(f"cvlan-ctrl: {e}", file=sys.stderr)
        return 1
    except FatalError as e:
        print(f"cvlan-ctrl: {e.message}", file=sys.stderr)
        return e.status
    except StateError as e:
        print(f"cvlan-ctrl: {e}", file=sys.stderr)
        return 1
    finally:
        await metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
