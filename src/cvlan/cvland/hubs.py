"""The node's side of vrouter failover: of the vrouter peers in the desired state (most preferred
first), only the active one carries the CVLAN subnet; the others stay as standby peers without
allowed IPs. Liveness and choice: dataplane/hubchoice.py."""

from __future__ import annotations

from cvlan.common.clock import Clock
from cvlan.dataplane.hubchoice import HubLiveness
from cvlan.dataplane.wgconfig import PeerState
from cvlan.wire.ipc import DesiredState
from cvlan.wire.keys import KeyHex


class HubFailover:
    def __init__(self, clock: Clock) -> None:
        self.liveness = HubLiveness(clock)
        self._order: tuple[KeyHex, ...] = ()

    def set_state(self, ds: DesiredState) -> None:
        """Take the vrouter peers of a new desired state (a single one needs no watching)."""
        order = tuple(KeyHex(p.public_key.lower()) for p in ds.peers if p.via_vrouter)
        self._order = order if len(order) > 1 else ()
        self.liveness.watch(self._order)

    def shape(self, ds: DesiredState) -> DesiredState:
        """ds with the CVLAN routes on the active vrouter peer only."""
        if not self._order:
            return ds
        act = self.liveness.active(self._order)
        peers = [
            p.model_copy(update={"allowed_ips": []}) if p.via_vrouter and p.public_key.lower() != act else p
            for p in ds.peers
        ]
        return ds.model_copy(update={"peers": peers})

    def observe(self, peers: dict[KeyHex, PeerState]) -> bool:
        """Feed the device's counters; True if the active vrouter changed."""
        for key in self._order:
            p = peers.get(key)
            if p is not None:
                self.liveness.observe(key, p.rx_bytes, p.last_handshake)
        return self.liveness.refresh()

    def active(self) -> KeyHex:
        return KeyHex(self.liveness.active(self._order) if self._order else "")

    def take_probes(self) -> set[str]:
        return self.liveness.take_probes()
