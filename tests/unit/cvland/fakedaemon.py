"""A cvland Daemon over fake backends (engine, router, firewall; no links), for the unit tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cvlan.common.clock import Clock, FakeClock
from cvlan.cvland.daemon import Backends, Daemon
from cvlan.dataplane.engine import FakeEngine
from cvlan.dataplane.firewall import FakeFirewall
from cvlan.dataplane.router import FakeRouter


def fake_backends(
    local_addresses: Iterable[str] = (), engine: FakeEngine | None = None, **more: Any
) -> Backends:
    """Fakes for everything; more: the optional backends (policy, forwarding, dns)."""
    return Backends(
        engine or FakeEngine(),
        FakeRouter(),
        FakeFirewall(),
        local_addresses=list(local_addresses),
        manage_links=False,
        **more,
    )


def started(state_dir: Path, b: Backends, clock: Clock | None = None) -> Daemon:
    """A daemon on interface fake0, started (what it saved in state_dir applied again)."""
    d = Daemon("fake0", state_dir, b, clock or FakeClock(), probe_s=5.0)
    d.start()
    return d
