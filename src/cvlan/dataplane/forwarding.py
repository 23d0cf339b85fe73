"""IPv4 forwarding for a node that serves subnet routes or is an exit node.

The kernel switch (net.ipv4.ip_forward) is global to the network namespace, so cvland remembers the
value it found in its state dir before it first turns forwarding on, and puts that value back when
the node no longer forwards, when it stops, and at the next start after a crash. What is forwarded
is limited by the nftables table (dataplane/firewall.py): only traffic from the CVLAN to the node's
approved routes (or anywhere, for an exit node)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Protocol

from cvlan.common.files import write_atomic

log = logging.getLogger(__name__)

SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")
SAVED_FILE = "ip_forward.saved"


class Forwarding(Protocol):
    def set(self, on: bool) -> None: ...
    def restore(self) -> None: ...


class SysctlForwarding:
    """Turns net.ipv4.ip_forward on, and back to what it was."""

    def __init__(self, state_dir: Path, sysctl: Path = SYSCTL) -> None:
        self.saved = state_dir / SAVED_FILE
        self.sysctl = sysctl

    def set(self, on: bool) -> None:
        if not on:
            self.restore()
            return
        if not self.saved.exists():
            write_atomic(self.saved, self.sysctl.read_text().strip() + "\n", 0o600)
        if self.sysctl.read_text().strip() != "1":
            self.sysctl.write_text("1\n")
            log.info("IPv4 forwarding turned on for subnet routes or exit node")

    def restore(self) -> None:
        """Put back the value found before forwarding was turned on (nothing if it never was)."""
        try:
            old = self.saved.read_text().strip()
        except FileNotFoundError:
            return
        if old in ("0", "1"):
            self.sysctl.write_text(old + "\n")
        with contextlib.suppress(FileNotFoundError):
            self.saved.unlink()


class FakeForwarding:
    def __init__(self) -> None:
        self.on = False

    def set(self, on: bool) -> None:
        self.on = on

    def restore(self) -> None:
        self.on = False
