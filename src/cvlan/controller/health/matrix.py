"""The reachability matrix of a CVLAN and the degradation rules (pure: no I/O, no clock).

Every node reports, per peer, the path it uses, the probe round trip and loss (docs/HEALTH.md). A
*pair* is one ordered (reporter, peer) observation. Its state, worst first:

    down    no path, or not one of the window's probes answered
    lossy   more than LOSS_THRESHOLD of the probes lost
    relay   answered, through a relay (works, but slower than it could be)
    ok      answered, direct or through a vrouter
    unknown the reporter is offline or has not measured the peer yet
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cvlan.wire.nodeproto import HEALTH_REFRESH_S

STALE_S = 2.5 * HEALTH_REFRESH_S
"""Peer entries older than this (the node stopped reporting them) count as not measured: unchanged
health is reported again every HEALTH_REFRESH_S, so this is two refreshes missed and some margin."""
LOSS_THRESHOLD = 0.1
"""A pair losing more than 10 % of its probes is degraded."""
STATES = ("down", "lossy", "relay", "ok", "unknown")
"""Pair states, worst first (the matrix is sorted this way)."""
PATHS = ("direct", "relay", "vrouter", "none")


@dataclass(frozen=True, slots=True)
class Member:
    """A CVLAN member as the controller knows it."""

    node_id: int
    name: str
    online: bool
    peers: tuple[Mapping[str, Any], ...] = ()
    """The peer entries of its last health report (PeerHealth as stored, see handlers._peer_health)."""


@dataclass(frozen=True, slots=True)
class Pair:
    src: int
    dst: int
    src_name: str
    dst_name: str
    state: str
    path: str
    relay_region: str = ""
    rtt_ms: float | None = None
    loss: float | None = None
    """Fraction of the window's probes lost (None: none sent yet)."""
    handshake_age_s: int | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    """relay_fallback | loss | unreachable, and their recoveries: direct_again | loss_ok | reachable."""
    node_id: int
    """The reporter (relay_fallback, loss) or the node its peers cannot reach (unreachable)."""
    peer_id: int
    """The peer of the pair (0 for unreachable/reachable)."""
    detail: str


def classify(entry: Mapping[str, Any]) -> tuple[str, float | None]:
    """(state, loss) of one reported peer entry."""
    sent, answered = int(entry.get("sent", 0)), int(entry.get("answered", 0))
    loss = None if sent == 0 else round(1.0 - answered / sent, 3)
    path = entry.get("path", "none")
    if path == "none" or (sent > 0 and answered == 0):
        return "down", loss
    if sent == 0:
        return "unknown", loss
    if loss is not None and loss > LOSS_THRESHOLD:
        return "lossy", loss
    return ("relay" if path == "relay" else "ok"), loss


def pairs(members: Iterable[Member]) -> list[Pair]:
    """Every (reporter, peer) pair among members, worst state first, then most loss, then slowest."""
    ms = list(members)
    names = {m.node_id: m.name for m in ms}
    out: list[Pair] = []
    for m in ms:
        seen: dict[int, Mapping[str, Any]] = (
            {int(e.get("node_id", 0)): e for e in m.peers} if m.online else {}
        )
        for dst in ms:
            if dst.node_id == m.node_id:
                continue
            out.append(_pair(m, dst.node_id, names[dst.node_id], seen.get(dst.node_id)))
    out.sort(key=_severity)
    return out


def pairs_of(m: Member) -> list[Pair]:
    """The pairs one report states (peer names are their ids: the report carries no names)."""
    return [_pair(m, int(e.get("node_id", 0)), str(e.get("node_id", 0)), e) for e in m.peers]


def _pair(m: Member, dst: int, dst_name: str, e: Mapping[str, Any] | None) -> Pair:
    if e is None:
        return Pair(m.node_id, dst, m.name, dst_name, "unknown", "none")
    state, loss = classify(e)
    age = e.get("handshake_age_s")
    return Pair(
        m.node_id,
        dst,
        m.name,
        dst_name,
        state,
        str(e.get("path", "none")),
        str(e.get("relay_region", "")),
        e.get("rtt_ms"),
        loss,
        None if age is None or age < 0 else int(age),
        int(e.get("rx_bytes", 0)),
        int(e.get("tx_bytes", 0)),
    )


def _severity(p: Pair) -> tuple[int, float, float, int, int]:
    return (STATES.index(p.state), -(p.loss or 0.0), -(p.rtt_ms or 0.0), p.src, p.dst)


def summary(ps: Iterable[Pair]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for p in ps:
        counts[p.state] += 1
    return counts


def unreachable(ps: Iterable[Pair]) -> set[int]:
    """Nodes that every peer measuring them reports down (at least one measuring peer)."""
    verdict: dict[int, bool] = {}
    for p in ps:
        if p.state == "unknown":
            continue
        verdict[p.dst] = verdict.get(p.dst, True) and p.state == "down"
    return {n for n, down in verdict.items() if down}


def pair_events(before: Mapping[int, Pair], after: Mapping[int, Pair]) -> list[Event]:
    """Degradations and recoveries of one reporter's pairs (keyed by peer) between two reports."""
    out: list[Event] = []
    for dst, new in after.items():
        old = before.get(dst)
        if old is None or old.state == "unknown" or new.state == "unknown":
            continue
        if old.path == "direct" and new.path == "relay":
            out.append(Event("relay_fallback", new.src, dst, f"relay {new.relay_region}".strip()))
        elif old.path == "relay" and new.path == "direct":
            out.append(Event("direct_again", new.src, dst, "direct"))
        if new.state == "lossy" and old.state != "lossy":
            out.append(Event("loss", new.src, dst, f"{_pct(new.loss)} loss"))
        elif old.state == "lossy" and new.state in ("ok", "relay"):
            out.append(Event("loss_ok", new.src, dst, f"{_pct(new.loss)} loss"))
    return out


def reach_events(before: set[int], after: set[int]) -> list[Event]:
    """A node its peers cannot reach any more, or again."""
    out = [Event("unreachable", n, 0, "no peer reaches it") for n in sorted(after - before)]
    out += [Event("reachable", n, 0, "reached again") for n in sorted(before - after)]
    return out


def _pct(loss: float | None) -> str:
    return f"{(loss or 0.0) * 100:.0f} %"
