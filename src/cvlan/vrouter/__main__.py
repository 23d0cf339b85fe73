"""cvlan-vrouter: hub router for CVLAN members of its region and the link to other regions' vrouters.

Registers with the bootstrap token `cvlan vrouter create` printed (once: the identity is kept in
the state dir), then polls the controller for the CVLANs it serves and keeps a WireGuard hub
interface, its routes, IP forwarding and an nftables forward chain (only within one CVLAN) in step.
Needs root (or CAP_NET_ADMIN) in its network namespace. Status: STATE_DIR/status.json."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from cvlan.client.bootstrap import ControllerCallError
from cvlan.common import log as cvlog
from cvlan.common.metrics import MetricsListener, MetricsListenError
from cvlan.common.settings import run_daemon, settings_from_args
from cvlan.common.version import add_version_flag
from cvlan.dataplane.engine import EngineError
from cvlan.vrouter.daemon import Vrouter
from cvlan.vrouter.identity import ensure_identity
from cvlan.vrouter.metrics import VrouterCollector, registry
from cvlan.vrouter.settings import VrouterSettings

log = logging.getLogger("cvlan.vrouter")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvlan-vrouter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every flag can also be given as CVLAN_VROUTER_<NAME> in the environment (flags win).",
    )
    add_version_flag(p)
    p.add_argument("--server", help="controller URL, e.g. https://ctrl.example.net:8443 (first start)")
    p.add_argument("--token", help="bootstrap token (cvvb_...); needed only on first start")
    p.add_argument("--ca-pin", help="sha256:HEX fingerprint of the controller CA, checked before registering")
    p.add_argument("--state-dir", type=Path, help="identity and status (default ./cvlan-vrouter)")
    p.add_argument("--interface", help="WireGuard hub interface name (default cvlan-hub0)")
    p.add_argument("--engine", choices=("auto", "wireguard-go", "boringtun", "kernel"))
    p.add_argument("--listen-port", type=int, help="UDP port of the hub (default: the registered endpoint's)")
    p.add_argument("--long-poll", type=int, dest="long_poll_s", help="seconds a poll may be held (0-60)")
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="Prometheus /metrics listener, or off (default 127.0.0.1:9373; if that port is taken, the "
        "vrouter runs without metrics and says so)",
    )
    cvlog.add_flags(p)
    return p


def load_settings(args: argparse.Namespace) -> VrouterSettings:
    names = ("server", "token", "ca_pin", "state_dir", "interface", "engine", "listen_port", "long_poll_s")
    return settings_from_args(VrouterSettings, args, (*names, "metrics_listen"))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fatal = (ControllerCallError, EngineError, OSError, MetricsListenError)
    return run_daemon("cvlan-vrouter", "CVLAN_VROUTER_", lambda: load_settings(args), serve, fatal)


async def serve(settings: VrouterSettings, stop: asyncio.Event | None = None) -> int:
    """Load or obtain the identity, start the hub interface, and reconcile until stopped."""
    ident = await ensure_identity(settings)
    vr = Vrouter(settings, ident)
    collector = VrouterCollector(vr)
    metrics = MetricsListener(registry(collector), collector.refresh)
    await metrics.start(settings.metrics_listen, required="metrics_listen" in settings.model_fields_set)
    await asyncio.to_thread(vr.start)
    log.info("vrouter running", extra={"relay_region": ident.region, "endpoint": ident.endpoint})
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await vr.run(stop)
    finally:
        await metrics.close()
        await asyncio.to_thread(vr.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
