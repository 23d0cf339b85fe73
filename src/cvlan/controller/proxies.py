"""Which peers are TLS-terminating fronts whose word about the client is believed.

Two things depend on it: the node API reads the client certificate a front forwarded in
X-Client-Cert, and the web UI marks its cookies Secure when a front says, with X-Forwarded-Proto,
that the browser came over TLS. Both ask this one object, so `trusted_proxies` means the same to
both: addresses or networks in CIDR notation, plus every peer of the proxy socket."""

from __future__ import annotations

import ipaddress

from cvlan.controller.settings import ControllerSettings

MEMO_SIZE = 1024


class TrustedProxies:
    """`believes(remote)` for the peer address of a request ("" is a Unix-socket peer)."""

    def __init__(self, networks: list[str], proxy_socket: bool = False) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._memo: dict[str, bool] = {}
        """Per peer address: a front has few; nodes behind it are never asked about."""
        if proxy_socket:
            # The controller's only Unix listener is the proxy socket; its peers have no address.
            self._memo[""] = True

    @classmethod
    def from_settings(cls, settings: ControllerSettings) -> TrustedProxies:
        return cls(settings.trusted_proxies, proxy_socket=settings.proxy_socket is not None)

    def believes(self, remote: str | None) -> bool:
        if remote is None:
            return False
        known = self._memo.get(remote)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(remote)
        except ValueError:
            known = False
        else:
            known = any(addr in net for net in self._networks)
        if len(self._memo) < MEMO_SIZE:
            self._memo[remote] = known
        return known
