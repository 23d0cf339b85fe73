"""cvlan-front: the TLS front of the node API for large fleets. It terminates every node's
mutual-TLS connection (TLS 1.3; the client certificate verified against the controller's CA) and
forwards the requests as plain HTTP to the controller's proxy socket with the node's certificate in
X-Client-Cert. After each handshake it keeps only the connection's traffic keys, not OpenSSL's
connection object: about 3 KB per idle node connection instead of about 24 KB in HAProxy or nginx.

Start the controller with --proxy-socket PATH and point this at the same PATH; with several
controller processes on one PostgreSQL, give --backend once for each: requests are balanced over
those that are up, and a controller that stops or dies is left out until it answers again."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from OpenSSL import SSL

from cvlan.common import log as cvlog
from cvlan.common.metrics import MetricsListener, MetricsListenError, offset
from cvlan.common.version import add_version_flag
from cvlan.front.backend import BackendPool
from cvlan.front.server import Front, Limits, tls_context
from cvlan.wire.endpoint import split_hostport

log = logging.getLogger("cvlan.front")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvlan-front", description=__doc__)
    add_version_flag(p)
    p.add_argument("--listen", required=True, help="HOST:PORT the nodes connect to, e.g. 0.0.0.0:8443")
    p.add_argument("--cert", type=Path, required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", type=Path, required=True, help="its private key (PEM; keep it mode 0600)")
    p.add_argument("--ca", type=Path, required=True, help="the controller's CA certificate (PEM)")
    p.add_argument(
        "--backend",
        type=Path,
        action="append",
        required=True,
        help="a controller's proxy socket (its --proxy-socket); repeat it for each controller process "
        "sharing one PostgreSQL",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT); each holds at most --max-conns (default 1)",
    )
    p.add_argument(
        "--max-conns",
        type=int,
        help="node connections per worker (default: the open-file limit less 200)",
    )
    p.add_argument(
        "--backend-conns",
        type=int,
        default=16,
        help="connections to each controller per worker (default 16)",
    )
    p.add_argument(
        "--no-park",
        action="store_true",
        help="forward long-polls for the controller to hold (one backend connection each while they "
        "wait) instead of holding them here; for a controller without the event stream",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        help="seconds a node connection with a verified certificate may sit idle (default 300; longer "
        "than the poll interval)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds from a request's first byte to its last before it is refused with 408; also how "
        "long a closed connection may take to drain answers its client does not read (default 30)",
    )
    d = Limits()
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=d.handshake_timeout,
        help="seconds from accept to the end of the TLS handshake, however the client paces it "
        f"(default {d.handshake_timeout:g})",
    )
    p.add_argument(
        "--max-uncertified",
        type=int,
        default=d.max_uncertified,
        help="connections per worker in the handshake or without a client certificate; beyond it the "
        f"oldest of them is closed for the new one (default {d.max_uncertified}, at most --max-conns)",
    )
    p.add_argument(
        "--max-uncertified-per-addr",
        type=int,
        default=d.max_uncertified_per_addr,
        help="of those, from one IPv4 address or IPv6 /64 per worker; beyond it a new connection is "
        f"closed at once (default {d.max_uncertified_per_addr})",
    )
    p.add_argument(
        "--uncertified-timeout",
        type=float,
        default=d.uncertified_timeout,
        help="seconds a connection without a client certificate (discovery, registration) may sit idle "
        f"(default {d.uncertified_timeout:g})",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="off",
        help="Prometheus /metrics of each worker process: worker N (from 0) listens on PORT+N "
        "(default off; e.g. 127.0.0.1:9374)",
    )
    cvlog.add_flags(p, defaults=True)
    return p


def limits(args: argparse.Namespace, max_conns: int) -> Limits:
    return Limits(
        max_conns=max_conns,
        idle_timeout=args.idle_timeout,
        request_timeout=args.request_timeout,
        handshake_timeout=args.handshake_timeout,
        max_uncertified=min(args.max_uncertified, max_conns),
        max_uncertified_per_addr=args.max_uncertified_per_addr,
        uncertified_timeout=args.uncertified_timeout,
    )


async def serve(
    args: argparse.Namespace, ctx: SSL.Context, host: str, port: int, max_conns: int, worker: int = 0
) -> None:
    pool = BackendPool(args.backend, size=args.backend_conns)
    front = Front(ctx, pool, limits(args, max_conns), park=not args.no_park)
    metrics = MetricsListener(front.metrics.registry)
    await metrics.start(offset(args.metrics_listen, worker), required=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(front, host, port, reuse_port=True, backlog=4096)
    front.start()
    log.info("listening", extra={"endpoint": f"{host}:{port}"})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await front.shutdown()
    await metrics.close()


def run_worker(
    args: argparse.Namespace, ctx: SSL.Context, host: str, port: int, max_conns: int, worker: int = 0
) -> int:
    import uvloop

    try:
        uvloop.run(serve(args, ctx, host, port, max_conns, worker))
    except MetricsListenError as e:
        print(f"cvlan-front: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cvlog.setup(args.log_level, args.log_format)
    try:
        host, port = split_hostport(args.listen, default_host="0.0.0.0")
        offset(args.metrics_listen, args.workers - 1)  # a bad address or port range fails here, once
        counts = (args.workers, args.backend_conns, args.max_uncertified, args.max_uncertified_per_addr)
        timeouts = (args.idle_timeout, args.request_timeout, args.handshake_timeout, args.uncertified_timeout)
        if min(counts) < 1 or min(timeouts) <= 0:
            raise ValueError(
                "--workers, --backend-conns, --max-uncertified and --max-uncertified-per-addr must be "
                "at least 1; --idle-timeout, --request-timeout, --handshake-timeout and "
                "--uncertified-timeout must be positive"
            )
        if len(set(args.backend)) != len(args.backend):
            raise ValueError("--backend names the same proxy socket twice")
        for f in (args.cert, args.key, args.ca):
            if not f.is_file():
                raise ValueError(f"{f}: no such file")
        ctx = tls_context(args.cert, args.key, args.ca)
    except (ValueError, SSL.Error, MetricsListenError) as e:
        print(f"cvlan-front: {e}", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    max_conns = args.max_conns or max(100, hard - 200)
    if args.workers == 1:
        return run_worker(args, ctx, host, port, max_conns)
    children: list[int] = []
    for worker in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_worker(args, ctx, host, port, max_conns, worker)
            finally:
                os._exit(code)
        children.append(pid)

    def forward(sig: int, _frame: object) -> None:
        for c in children:
            try:
                os.kill(c, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    alive = set(children)
    while alive:
        pid, st = os.wait()
        alive.discard(pid)
        code = os.waitstatus_to_exitcode(st)
        if code not in (0, -signal.SIGTERM, -signal.SIGINT) and status == 0:
            print(
                f"cvlan-front: worker {pid} exited with status {code}; stopping the others",
                file=sys.stderr,
            )
            status = 1
            forward(signal.SIGTERM, None)
    return status


if __name__ == "__main__":
    sys.exit(main())
