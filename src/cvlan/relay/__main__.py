"""cvlan-relay: DERP-style relay of already-encrypted WireGuard packets between nodes of one CVLAN,
plus a STUN responder. Start it with the command `cvlan relay create` prints."""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import logging
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from cvlan.client.bootstrap import ControllerCallError
from cvlan.common import log as cvlog
from cvlan.common.settings import run_daemon, settings_from_args
from cvlan.common.version import add_version_flag
from cvlan.relay.bootstrap import RelayIdentity, ensure_identity
from cvlan.relay.revocation import ControllerChecker, front_hint
from cvlan.relay.server import RelayServer
from cvlan.relay.settings import RelaySettings
from cvlan.relay.stunserver import start_stun
from cvlan.wire.endpoint import split_hostport

log = logging.getLogger("cvlan.relay")
RENEW_CHECK_S = 3600.0
"""How often the relay checks whether its certificate needs renewing."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvlan-relay",
        description=__doc__,
        epilog="Every flag can also be given as CVLAN_RELAY_<NAME> in the environment (flags win).",
    )
    add_version_flag(p)
    p.add_argument("--server", help="controller URL, e.g. https://ctrl.example.net:8443")
    p.add_argument("--token", help="bootstrap token (cvrb_...); needed only on first start")
    p.add_argument("--ca-pin", help="sha256:HEX fingerprint of the controller CA, checked before registering")
    p.add_argument("--listen", help="HOST:PORT for TLS/WebSocket clients and /metrics (default 0.0.0.0:443)")
    p.add_argument("--stun-listen", help="UDP HOST:PORT for STUN (default 0.0.0.0:3478; '' disables)")
    p.add_argument(
        "--state-dir", type=Path, help="where the key and certificates live (default ./cvlan-relay)"
    )
    p.add_argument(
        "--queue-len", type=int, help="frames queued per client before the oldest is dropped (512)"
    )
    p.add_argument(
        "--queue-bytes",
        type=int,
        help="bytes queued per client before the oldest frame is dropped (1048576; a frame counts 64 more)",
    )
    p.add_argument(
        "--fail-open-s",
        type=float,
        help="while the controller cannot be reached, keep accepting nodes for this many seconds "
        "after its last answer (300; 0 refuses at once)",
    )
    cvlog.add_flags(p)
    return p


def load_settings(args: argparse.Namespace) -> RelaySettings:
    names = (
        "server",
        "token",
        "ca_pin",
        "listen",
        "stun_listen",
        "state_dir",
        "queue_len",
        "queue_bytes",
        "fail_open_s",
    )
    return settings_from_args(RelaySettings, args, names)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fatal = (ControllerCallError, OSError)
    return run_daemon("cvlan-relay", "CVLAN_RELAY_", lambda: load_settings(args), serve, fatal)


async def serve(settings: RelaySettings, stop: asyncio.Event | None = None) -> int:
    """Bootstrap (or load) the identity, then serve TLS/WebSocket and STUN until stopped."""
    # asyncio gives every TLS connection a 256 KiB read buffer; a relay holds thousands of mostly
    # idle connections; a 16 KiB buffer (one TLS record) saves memory and larger frames just take
    # several reads.
    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024
    try:
        ident = await ensure_identity(settings)
    except ControllerCallError as e:
        raise front_hint(settings.server, e) from e
    checker = ControllerChecker(
        settings.server, ident, ttl=settings.revalidate_s, fail_open_s=settings.fail_open_s
    )
    await checker.probe()
    relay = RelayServer(
        ident.region,
        queue_len=settings.queue_len,
        queue_bytes=settings.queue_bytes,
        keepalive_s=settings.keepalive_s,
        checker=checker.check,
        revalidate_s=settings.revalidate_s,
    )
    runner = web.AppRunner(relay.app(), access_log=None, shutdown_timeout=5)
    await runner.setup()
    host, port = split_hostport(settings.listen, any_port=True)
    tls = relay.ssl_context(str(ident.cert_file), str(ident.key_file), ident.ca_pem)
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    stun_transport = None
    if settings.stun_listen:
        shost, sport = split_hostport(settings.stun_listen, any_port=True)
        stun_transport = await start_stun(shost, sport, relay.metrics)
    log.info("relay serving", extra={"relay_region": ident.region, "endpoint": settings.listen})
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    renew = asyncio.create_task(_renew_loop(settings, ident, tls, checker))
    try:
        await stop.wait()
    finally:
        renew.cancel()
        if stun_transport is not None:
            stun_transport.close()
        await relay.close_all()
        await runner.cleanup()
    return 0


async def _renew_loop(
    settings: RelaySettings, ident: RelayIdentity, tls: ssl.SSLContext, checker: ControllerChecker
) -> None:
    """Once two thirds of the certificate's lifetime have passed, register again with the token and
    load the new certificate into the running TLS context (new connections use it at once)."""
    serving = ident.cert.serial_number  # the files are replaced in place: remember what we loaded
    while True:
        await asyncio.sleep(RENEW_CHECK_S)
        try:
            new = await ensure_identity(settings)
        except ControllerCallError as e:
            log.warning("relay certificate renewal failed; will retry", extra={"reason": str(e)})
            continue
        if new.cert.serial_number != serving:
            tls.load_cert_chain(new.cert_file, new.key_file)
            checker.use(new)
            serving = new.cert.serial_number
            log.info("relay certificate renewed", extra={"relay_region": new.region})


if __name__ == "__main__":
    sys.exit(main())
