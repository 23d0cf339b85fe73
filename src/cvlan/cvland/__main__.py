"""cvland: the CVLAN data-plane daemon (root). Owns the WireGuard interface, its addresses, routes and
nftables policy, and applies the desired state cvlan-ctrl sends over a Unix socket."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from cvlan.common import log as cvlog
from cvlan.common.clock import SystemClock
from cvlan.common.metrics import MetricsListener, MetricsListenError
from cvlan.common.settings import invalid_setting
from cvlan.common.version import add_version_flag
from cvlan.cvland.daemon import Backends, Daemon
from cvlan.cvland.dnsservice import DnsService
from cvlan.cvland.metrics import CvlandCollector, registry
from cvlan.cvland.probe import PROBE_INTERVAL_S, Prober
from cvlan.cvland.relaypath import RelayPath
from cvlan.cvland.server import Serial, SocketInUse, serve
from cvlan.cvland.settings import DNS_MODES, CvlandSettings
from cvlan.dataplane.engine import EngineError, check_engine, make_engine, pick_engine
from cvlan.dataplane.firewall import NftFirewall
from cvlan.dataplane.forwarding import SysctlForwarding
from cvlan.dataplane.hostdns import HostDnsError, ResolvConf, make_host_dns
from cvlan.dataplane.policyroute import IpPolicyRouter
from cvlan.dataplane.router import NetlinkRouter

log = logging.getLogger("cvlan.cvland")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvland", description=__doc__)
    add_version_flag(p)
    p.add_argument("--socket", type=Path, help="IPC socket path (default /run/cvland/cvland.sock)")
    p.add_argument("--interface", help="WireGuard interface name, at most 15 characters (default cvlan0)")
    p.add_argument(
        "--engine",
        choices=("auto", "wireguard-go", "kernel", "boringtun"),
        help="WireGuard engine (default auto: the kernel module where present, else wireguard-go)",
    )
    p.add_argument("--state-dir", type=Path, help="state directory (default /var/lib/cvland)")
    p.add_argument("--socket-group", help="make the socket 0660 for this group (default: 0600, root only)")
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="Prometheus /metrics listener, or off (default 127.0.0.1:9371; if that port is taken, "
        "cvland runs without metrics and says so)",
    )
    p.add_argument(
        "--dns-mode",
        choices=DNS_MODES,
        help="point the host's resolver at the node's for overlay names: auto (systemd-resolved where it "
        "runs, else /etc/resolv.conf, saved and restored), or off (default auto; docs/DNS.md)",
    )
    p.add_argument(
        "--restore-dns",
        action="store_true",
        help="put back the resolv.conf a cvland that did not stop cleanly left pointing at its resolver, "
        "then exit (the packages' removal scripts run it; a normal start does it too)",
    )
    cvlog.add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {
        "socket": args.socket,
        "interface": args.interface,
        "engine": args.engine,
        "state_dir": args.state_dir,
        "socket_group": args.socket_group,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "metrics_listen": args.metrics_listen,
        "dns_mode": args.dns_mode,
    }
    try:
        settings = CvlandSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        print(invalid_setting("cvland", e, "CVLAND_"), file=sys.stderr)
        return 2
    cvlog.setup(settings.log_level, settings.log_format)
    if args.restore_dns:
        return restore_dns(settings)
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0


def restore_dns(settings: CvlandSettings) -> int:
    try:
        ResolvConf(settings.resolv_conf, settings.state_dir).restore()
    except (OSError, HostDnsError) as e:
        print(f"cvland: restore {settings.resolv_conf}: {e}", file=sys.stderr)
        return 1
    return 0


async def run(settings: CvlandSettings) -> int:
    try:
        engine_name = pick_engine(settings.engine)
        check_engine(engine_name)
    except EngineError as e:
        print(f"cvland: {e}", file=sys.stderr)
        return 2
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(engine_name, settings.interface, settings.state_dir / "engine.log")
    dns = None
    if settings.dns_mode != "off":
        host = make_host_dns(settings.dns_mode, settings.resolv_conf, settings.state_dir)
        dns = DnsService(asyncio.get_running_loop(), host, settings.state_dir, settings.resolv_conf)
    backends = Backends(
        engine=engine,
        router=NetlinkRouter(),
        firewall=NftFirewall(settings.interface),
        policy=IpPolicyRouter(),
        forwarding=SysctlForwarding(settings.state_dir),
        dns=dns,
    )
    # Relay fallback, relay proxy and STUN of the WireGuard port (docs/RELAY.md).
    relay = RelayPath(asyncio.get_running_loop(), settings.stun_interval_s)
    daemon = Daemon(
        settings.interface,
        settings.state_dir,
        backends,
        SystemClock(),
        settings.probe_s,
        relay=relay,
        direct_retry_s=settings.direct_retry_s,
    )
    serial = Serial()
    try:
        return await _run(settings, daemon, serial, engine_name)
    finally:
        await serial.call(daemon.stop)
        serial.close()
        await relay.close()
        log.info("cvland stopped; interface removed")


async def _run(settings: CvlandSettings, daemon: Daemon, serial: Serial, engine_name: str) -> int:
    try:
        await serial.call(daemon.start)
    except EngineError as e:
        print(f"cvland: {e}", file=sys.stderr)
        return 1
    try:
        server = await serve(daemon, serial, settings.socket, settings.socket_group)
    except (SocketInUse, OSError, KeyError) as e:
        print(f"cvland: {e}", file=sys.stderr)
        return 1
    collector = CvlandCollector(daemon, serial)
    metrics = MetricsListener(registry(collector), collector.refresh)
    try:
        await metrics.start(settings.metrics_listen, required="metrics_listen" in settings.model_fields_set)
    except MetricsListenError as e:
        server.close()
        print(f"cvland: {e}", file=sys.stderr)
        return 1
    log.info("cvland ready", extra={"reason": f"{engine_name} {settings.interface} {settings.socket}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    prober = Prober(daemon.probes, daemon.clock.monotonic)
    probing = asyncio.create_task(_probe_loop(daemon, prober, stop))
    try:
        await _loop(daemon, serial, stop, settings.tick_s)
    finally:
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probing
        prober.close()
        await metrics.close()
        server.close()
        settings.socket.unlink(missing_ok=True)
    return 0


async def _probe_loop(daemon: Daemon, prober: Prober, stop: asyncio.Event) -> None:
    """Every PROBE_INTERVAL_S: (re)bind the probe socket to the overlay address, probe every peer."""
    while not stop.is_set():
        ds = None if daemon.is_down else daemon.desired
        await prober.ensure(ds.address if ds else "", ds.cvlan_subnet if ds else "")
        prober.send_round()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=PROBE_INTERVAL_S)


async def _loop(daemon: Daemon, serial: Serial, stop: asyncio.Event, tick_s: float) -> None:
    while not stop.is_set():
        try:
            await serial.call(daemon.tick)
        except Exception as e:
            log.warning("tick failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        try:
            await asyncio.wait_for(stop.wait(), timeout=tick_s)
        except TimeoutError:
            pass


if __name__ == "__main__":
    sys.exit(main())
