"""Starting cvland inside a Lab namespace through its console script."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cvlan.devtools.harness.enrol import cvland_argv
from cvlan.wire.ipc import DeviceStatus
from tests.harness import ipcclient
from tests.harness.netns import Lab, Netns, Proc


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
    log_level = os.environ.get("CVLAN_TEST_LOG_LEVEL", "info")
    argv = cvland_argv(
        sock, ifname, state_dir, "--engine", "wireguard-go", "--log-level", log_level, dns_mode=dns_mode
    )
    proc = ns.spawn(f"cvland{tag}", *argv)
    try:
        # Bounded by the process itself (given up at once if it exits); 60 s for a loaded machine,
        # where starting Python and wireguard-go took over 20 s.
        ipcclient.wait_socket(sock, timeout=60.0, alive=proc.alive)
    except TimeoutError as e:
        raise RuntimeError(f"{e}\n--- cvland log ---\n{proc.output()}") from None
    return Dataplane(ns, ifname, sock, state_dir, proc, dns_mode)
