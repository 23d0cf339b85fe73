"""cvland's DNS: the resolver's listeners and table, and the host's split-DNS configuration, kept in
step with the applied desired state (docs/DNS.md).

Order matters for "never pointing at a dead resolver": the host is pointed at the resolver only
after it listens, and pointed back before it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from cvlan.cvland.dnsserver import Resolver
from cvlan.cvland.resolver import Table
from cvlan.dataplane.hostdns import HostDns, HostDnsError, ResolvConf, SplitDns
from cvlan.wire.ipc import DesiredState, DnsStatus

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0


class DnsService:
    """Called from cvland's host worker thread; the listeners live on the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: HostDns | None, state_dir: Path, resolv_conf: Path
    ) -> None:
        self.loop = loop
        self.host = host
        self.resolver = Resolver()
        self._leftover = ResolvConf(resolv_conf, state_dir)
        self._applied: SplitDns | None = None
        self._zone = ""
        self.error = ""

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def cleanup(self) -> None:
        """At start: put back a resolv.conf a crashed run left pointing at its resolver."""
        try:
            self._leftover.restore()
        except (OSError, HostDnsError) as e:
            log.warning("restoring the host's resolver configuration failed: %s", e)

    def apply(self, ds: DesiredState, ifname: str, force: bool = False) -> None:
        """Serve ds.dns and point the host at it (or undo both when ds.dns is None)."""
        if ds.dns is None:
            self.teardown()
            return
        d = ds.dns
        self.resolver.table = Table.build(d)
        self.resolver.local = frozenset({ds.address.split("/")[0], d.resolver})
        self._zone = d.zone
        self.error = ""
        try:
            self._call(self.resolver.listen(d.resolver))
        except Exception as e:
            self.error = f"resolver on {d.resolver}:53: {e}"
            log.warning("dns resolver not started: %s", self.error)
            self._unpoint()
            return
        want = SplitDns(
            ifname, d.resolver, d.zone, (d.zone.split(".", 2)[2], *(f.domain for f in d.forwarders))
        )
        if self.host is not None and (force or want != self._applied):
            try:
                self.host.apply(want)
                self._applied = want
            except (OSError, HostDnsError) as e:
                self.error = f"host resolver configuration ({self.host.mode}): {e}"
                log.warning("%s", self.error)
        if self.host is not None:
            self.resolver.upstreams = self.host.upstreams()

    def _unpoint(self) -> None:
        if self.host is not None and self._applied is not None:
            try:
                self.host.restore()
            except (OSError, HostDnsError) as e:
                log.warning("restoring the host's resolver configuration failed: %s", e)
            self._applied = None

    def teardown(self) -> None:
        """Point the host back, then stop listening."""
        self._unpoint()
        self.resolver.table = None
        self._zone = ""
        with contextlib.suppress(Exception):
            self._call(self.resolver.close())

    def status(self) -> DnsStatus | None:
        if not self._zone:
            return None
        r = self.resolver
        t = r.table
        return DnsStatus(
            zone=self._zone,
            resolver=f"{r.address}:53" if r.listening else "",
            host_config=self.host.mode if self.host is not None and self._applied is not None else "none",
            names=t.hosts if t is not None else 0,
            error=self.error,
        )
