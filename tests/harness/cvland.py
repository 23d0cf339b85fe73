"""Starting cvland inside a Lab namespace through its console script."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cvlan.wire.ipc import DeviceStatus
from tests.harness import ipcclient
from tests.harness.netns import Lab, Netns, Proc


def script(name: str) -> str:
    """The path of one of our console scripts in the running virtualenv."""
    p = Path(sys.executable).parent / name
    if not p.exists():
        raise RuntimeError(f"console script {name} not installed in {p.parent} (pip install -e .)")
    return str(p)


@dataclass
class Dataplane:
    """A cvland running in a namespace."""

    ns: Netns
    ifname: str
    socket: Path
    state_dir: Path
    proc: Proc
    dns_mode: str = "off"

    def status(self) -> DeviceStatus:
        return ipcclient.status(self.socket)


def start_cvland(
    lab: Lab,
    ns: Netns,
    ifname: str | None = None,
    state_dir: Path | None = None,
    tag: str = "",
    dns_mode: str = "off",
) -> Dataplane:
    """Start cvland in ns with a run-unique interface name; waits until its socket answers.

    tag distinguishes several cvland instances in one namespace (one per CVLAN). dns_mode is off
    unless a test asks: without /etc/netns/<ns>/resolv.conf, a namespace shares the host's
    /etc/resolv.conf, which tests must never touch."""
    ifname = ifname or lab.wg_ifname()
    state_dir = state_dir or lab.dir / f"{ns.short}{tag}-cvland"
    sock = lab.dir / f"{ns.short}{tag}-cvland.sock"
    proc = ns.spawn(
        f"cvland{tag}",
        script("cvland"),
        "--socket",
        str(sock),
        "--interface",
        ifname,
        "--state-dir",
        str(state_dir),
        "--engine",
        "wireguard-go",
        "--dns-mode",
        dns_mode,
        "--log-level",
        os.environ.get("CVLAN_TEST_LOG_LEVEL", "info"),
    )
    try:
        ipcclient.wait_socket(sock, alive=proc.alive)
    except TimeoutError as e:
        raise RuntimeError(f"{e}\n--- cvland log ---\n{proc.output()}") from None
    return Dataplane(ns, ifname, sock, state_dir, proc, dns_mode)
