"""cvlan-controller: the CVLAN control plane (tenants, IPAM, CA, node API, management API, web UI)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import signal
import stat
import sys
from collections.abc import Coroutine
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from cvlan.common import log as cvlog
from cvlan.common.version import add_version_flag
from cvlan.controller import usercmd
from cvlan.controller.app import bootstrap_admin, build, server_ssl
from cvlan.controller.nodeapi import NODEAPI_KEY
from cvlan.controller.nodeapi.lean import LeanNodeServer
from cvlan.controller.settings import load_settings

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
    s.add_argument("--public-url", help="URL nodes and admins use to reach this controller")
    s.add_argument("--config", type=Path, help="TOML file with settings (same names as the flags)")
    s.add_argument(
        "--no-tls", action="store_true", help="serve plain HTTP (only behind a TLS-terminating proxy)"
    )
    s.add_argument(
        "--proxy-socket",
        type=Path,
        help="also serve plain HTTP on this Unix socket for a TLS-terminating proxy on the same host "
        "(its X-Client-Cert header is believed; the socket is created mode 0660)",
    )
    s.add_argument("--log-format", choices=("text", "json"))
    s.add_argument("--log-level")
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
        "public_url": args.public_url,
        "tls": False if args.no_tls else None,
        "proxy_socket": args.proxy_socket,
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
    await runner.setup()
    host, port = settings.host_port
    site = web.TCPSite(
        runner,
        host,
        port,
        ssl_context=server_ssl(c) if settings.tls else None,
        backlog=4096,
        reuse_address=True,
    )
    try:
        await site.start()
    except OSError as e:
        print(f"cvlan-controller: cannot listen on {settings.listen}: {e.strerror}", file=sys.stderr)
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
            await runner.cleanup()
            return 1
        log.info("controller listening for its TLS front", extra={"endpoint": str(settings.proxy_socket)})
    log.info("controller listening", extra={"endpoint": settings.url})
    if conf:
        log.info(f"first start: wrote {conf} (platform admin token; mode 0600)")
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("controller stopping")
    if listener is not None:
        listener.close()
    await runner.cleanup()
    if settings.proxy_socket is not None:
        settings.proxy_socket.unlink(missing_ok=True)
    return 0


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
