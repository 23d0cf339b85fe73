"""cvlan-controller: the CVLAN control plane (tenants, IPAM, CA, node API, management API, web UI)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import signal
import ssl
import stat
import sys
from collections.abc import Coroutine
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from cvlan.common import log as cvlog
from cvlan.common.version import add_version_flag
from cvlan.controller import usercmd
from cvlan.controller.app import Controller, bootstrap_admin, build, metrics_app
from cvlan.controller.nodeapi import NODEAPI_KEY
from cvlan.controller.nodeapi.lean import LeanNodeServer
from cvlan.controller.settings import load_settings
from cvlan.controller.tlsserve import TlsKeeper
from cvlan.wire.endpoint import split_hostport

log = logging.getLogger("cvlan.controller")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvlan-controller", description=__doc__)
    add_version_flag(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "serve",
        help="run the controller",
        description="Run the controller. Settings come "
        "from defaults, then --config (TOML), then CVLAN_CONTROLLER_* variables, then flags.",
    )
    s.add_argument("--data-dir", type=Path, help="state directory (default ./cvlan-data)")
    s.add_argument(
        "--db",
        help="database URL (default: SQLite inside the data dir); "
        "e.g. postgresql+asyncpg://user@/cvlan?host=/run/postgresql",
    )
    s.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8443)")
    s.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="plain-HTTP listener for Prometheus (GET /metrics, no authentication; default "
        "127.0.0.1:9464); an empty value turns it off",
    )
    s.add_argument("--public-url", help="URL nodes and admins use to reach this controller")
    s.add_argument("--config", type=Path, help="TOML file with settings (same names as the flags)")
    s.add_argument(
        "--no-tls", action="store_true", help="serve plain HTTP (only behind a TLS-terminating proxy)"
    )
    s.add_argument(
        "--web-listen",
        help="HOST:PORT of a second listener for the management API and web UI with your own "
        "certificate (--web-cert, --web-key), e.g. 0.0.0.0:443; nodes stay on --listen",
    )
    s.add_argument("--web-cert", type=Path, help="PEM certificate chain for --web-listen (e.g. from ACME)")
    s.add_argument("--web-key", type=Path, help="PEM private key for --web-cert")
    s.add_argument(
        "--proxy-socket",
        type=Path,
        help="also serve plain HTTP on this Unix socket for a TLS-terminating proxy on the same host "
        "(its X-Client-Cert header is believed; the socket is created mode 0660). Its directory and "
        "every directory above must be owned by root or this user and not writable by group or others "
        "unless sticky (like /tmp), else the controller refuses to start",
    )
    cvlog.add_flags(s)
    usercmd.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd in usercmd.COMMANDS:
        return usercmd.main(args)
    overrides = {
        "data_dir": args.data_dir,
        "db": args.db,
        "listen": args.listen,
        "metrics_listen": args.metrics_listen,
        "public_url": args.public_url,
        "tls": False if args.no_tls else None,
        "proxy_socket": args.proxy_socket,
        "web_listen": args.web_listen,
        "web_cert": args.web_cert,
        "web_key": args.web_key,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    try:
        settings = load_settings(args.config, overrides)
    except ValidationError as e:
        err = e.errors()[0]
        print(
            f"cvlan-controller: invalid setting {'.'.join(map(str, err['loc']))}: {err['msg']}",
            file=sys.stderr,
        )
        return 2
    except (OSError, ValueError) as e:
        print(f"cvlan-controller: cannot read config: {e}", file=sys.stderr)
        return 2
    cvlog.setup(settings.log_level, settings.log_format)
    try:
        return _run_loop(_serve(settings))
    except KeyboardInterrupt:
        return 0


def _run_loop(main: Coroutine[object, object, int]) -> int:
    """Run on uvloop when installed: stdlib asyncio keeps a 256 KiB zeroed read buffer per TLS
    connection (about 300 KB RSS per idle node connection, measured); uvloop about 60 KB."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(settings: object) -> int:
    from cvlan.controller.settings import ControllerSettings

    assert isinstance(settings, ControllerSettings)
    if settings.proxy_socket is not None:
        unsafe = unsafe_socket_dir(settings.proxy_socket)
        if unsafe:
            print(
                f"cvlan-controller: refusing proxy socket {settings.proxy_socket}: {unsafe}", file=sys.stderr
            )
            return 1
    try:
        c = await build(settings)
        conf = await bootstrap_admin(c)
    except Exception as e:  # noqa: BLE001 - any failure to open the store is fatal at start
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(
            f"cvlan-controller: cannot open database {settings.db_url.split('@')[-1]}: {msg}", file=sys.stderr
        )
        return 1
    runner = web.AppRunner(c.app, access_log=None, handler_cancellation=True)
    lean = None
    if settings.proxy_socket is not None and settings.proxy_fast_polls:
        lean = LeanNodeServer(c.app[NODEAPI_KEY], lambda: _web_stack(runner))
        c.app.on_shutdown.append(lean.shutdown)  # after the node API's, which wakes the long-polls
    try:
        keeper = TlsKeeper(settings, c.ca, c.ctx.clock) if settings.tls else None
    except (OSError, ssl.SSLError) as e:
        print(f"cvlan-controller: cannot load TLS certificate: {e}", file=sys.stderr)
        return 1
    await runner.setup()
    try:
        await _listen(runner, settings.listen, keeper.node_ctx if keeper else None)
        if keeper is not None and keeper.web_ctx is not None:
            await _listen(runner, settings.web_listen, keeper.web_ctx)
            log.info("web listener with the operator's certificate", extra={"endpoint": settings.web_listen})
    except OSError as e:
        print(f"cvlan-controller: cannot listen on {e.filename}: {e.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    metrics = await _start_metrics(c)
    if metrics is None:
        await runner.cleanup()
        return 1
    listener: asyncio.Server | None = None
    if settings.proxy_socket is not None:
        try:
            listener = await _start_proxy_socket(runner, settings.proxy_socket, lean)
        except OSError as e:
            print(
                f"cvlan-controller: cannot listen on proxy socket {settings.proxy_socket}: {e.strerror}",
                file=sys.stderr,
            )
            await metrics.cleanup()
            await runner.cleanup()
            return 1
        log.info("controller listening for its TLS front", extra={"endpoint": str(settings.proxy_socket)})
    log.info("controller listening", extra={"endpoint": settings.url})
    if conf:
        log.info(f"first start: wrote {conf} (platform admin token; mode 0600)")
    tune_gc()
    stop, hup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    tls_task = asyncio.create_task(keeper.run(stop, hup)) if keeper is not None else None
    await stop.wait()
    log.info("controller stopping")
    if tls_task is not None:
        await tls_task
    if listener is not None:
        listener.close()
    await metrics.cleanup()
    await runner.cleanup()
    if settings.proxy_socket is not None:
        settings.proxy_socket.unlink(missing_ok=True)
    return 0


async def _listen(runner: web.AppRunner, listen: str, ctx: ssl.SSLContext | None) -> None:
    """Start a TCP site on HOST:PORT; OSError with the address as filename if it cannot listen."""
    host, port = split_hostport(listen, any_port=True)
    site = web.TCPSite(runner, host, port, ssl_context=ctx, backlog=4096, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        raise OSError(e.errno, e.strerror, listen) from e


async def _start_metrics(c: Controller) -> web.AppRunner | None:
    """The Prometheus listener (plain HTTP, settings.metrics_listen). A runner with no site when the
    setting is empty; None (after one line on stderr) when the address cannot be bound."""
    runner = web.AppRunner(metrics_app(c), access_log=None)
    await runner.setup()
    where = c.settings.metrics_host_port
    if where is None:
        return runner
    try:
        await web.TCPSite(runner, where[0], where[1], reuse_address=True).start()
    except OSError as e:
        print(
            f"cvlan-controller: cannot listen for metrics on {c.settings.metrics_listen}: {e.strerror}",
            file=sys.stderr,
        )
        await runner.cleanup()
        return None
    log.info("metrics listening", extra={"endpoint": f"http://{c.settings.metrics_listen}/metrics"})
    return runner


def unsafe_socket_dir(path: Path) -> str | None:
    """Why the proxy socket's directory would let another user replace or intercept the socket, or None.

    Whoever may write to a directory on the path may rename or remove the socket and bind their own,
    then read every request the TLS front forwards (node certificates, API tokens, sessions). So the
    socket's directory and every directory above it must be owned by root or by this process's user,
    and must not be writable by group or others - unless the sticky bit is set (as on /tmp), which
    keeps others from removing or renaming what this user created there."""
    me = os.geteuid()
    given, real = path.parent.absolute(), path.parent.resolve()
    for directory in dict.fromkeys((given, *given.parents, real, *real.parents)):
        try:
            st = directory.stat()
        except OSError as e:
            return f"cannot check directory {directory}: {e.strerror}"
        if st.st_uid not in (0, me):
            return f"directory {directory} is owned by uid {st.st_uid}, not by root or this user (uid {me})"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not st.st_mode & stat.S_ISVTX:
            who = (
                "group and others"
                if writable == stat.S_IWGRP | stat.S_IWOTH
                else ("group" if writable == stat.S_IWGRP else "others")
            )
            return (
                f"directory {directory} (mode {stat.S_IMODE(st.st_mode):04o}) is writable by {who}: "
                "make it writable by its owner only (chmod go-w) or sticky (chmod +t)"
            )
    return None


GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Keep the garbage collector's full scans out of the poll path.

    With the default thresholds (700, 10, 10) every young collection promoted the requests in flight
    at that moment into the oldest generation; the promoted count passed a quarter of it every
    ~30 s at 3,300 polls/s, and each full collection then stopped the event loop for 55-280 ms at
    10,000 nodes (ten times the objects at 100,000). Larger young generations promote far fewer
    objects. Everything alive at start (modules, the app, the CA) lives as long as the process and
    is frozen out of the scans altogether (about 120,000 objects)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _start_proxy_socket(
    runner: web.AppRunner, path: Path, lean: LeanNodeServer | None
) -> asyncio.Server | None:
    """Listen on a Unix socket for the TLS front: a stale socket file is replaced, anything else is not.

    With `lean`, polls are answered by the lean server and every other request by the web stack;
    the returned listener is then the caller's to close. Without, the web stack's own site serves
    the socket (stopped with the runner) and None is returned."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(errno.EEXIST, "exists and is not a socket")
        path.unlink()
    old = os.umask(0o117)  # the socket is created 0660, never briefly wider
    try:
        if lean is not None:
            return await asyncio.get_running_loop().create_unix_server(lean, str(path), backlog=4096)
        await web.UnixSite(runner, str(path), backlog=4096).start()
        return None
    finally:
        os.umask(old)


def _web_stack(runner: web.AppRunner) -> asyncio.Protocol:
    """A connection handler of the web stack, for a connection the lean server hands over."""
    server = runner.server
    assert server is not None, "the runner is set up before the proxy socket listens"
    return server()


if __name__ == "__main__":
    sys.exit(main())
