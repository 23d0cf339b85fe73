"""cvlancli: look at this node's CVLAN data plane (status, peers, ping, netcheck), take it off the
network and back (down, up).

Talks to the local cvland over its IPC socket (root or the socket's group) and, for controller and
certificate facts, reads cvlan-ctrl's state directory when it is readable."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cvlan.cli.table import expires_in, print_table
from cvlan.client import netcheck
from cvlan.client.ipc import IpcError, refused, request_once
from cvlan.common.version import add_version_flag
from cvlan.wire.ipc import DeviceStatus, DnsStatus, PeerStatus

DEFAULT_SOCKET = Path("/run/cvland/cvland.sock")
DEFAULT_CTRL_STATE = Path("/var/lib/cvlan-ctrl")


class CliError(Exception):
    """One line for stderr; exit status 1."""


def ipc(path: Path, op: str, timeout: float = 5.0, **body: Any) -> dict[str, Any]:
    """One request to cvland; CliError with a clear line if it is not there or refuses."""
    try:
        ans = request_once(path, op, timeout, **body)
    except FileNotFoundError:
        raise CliError(f"cvland is not running (no socket at {path})") from None
    except PermissionError:
        raise CliError(f"no permission to open {path} (run as root or in the socket's group)") from None
    except OSError as e:
        raise CliError(f"cvland on {path}: {e.strerror or e}") from None
    except IpcError:
        raise CliError(f"cvland on {path} sent no valid answer") from None
    if not ans.get("ok"):
        raise CliError(refused(op, ans))
    return ans


def device_status(path: Path) -> DeviceStatus:
    return DeviceStatus.model_validate(ipc(path, "status"))


def ctrl_facts(state_dir: Path) -> dict[str, Any]:
    """Controller URL, node, CVLAN and certificate expiry from cvlan-ctrl's state.db ({} if unreadable)."""
    db_path = state_dir / "state.db"
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2)
        try:
            kv = dict(db.execute("SELECT key, value FROM kv").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    out: dict[str, Any] = {k: kv[k] for k in ("server", "node_name", "cvlan_name", "address") if k in kv}
    if "node_id" in kv:
        out["node_id"] = int(kv["node_id"])
    if kv.get("cert_pem"):
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(kv["cert_pem"].encode())
        out["cert_not_after"] = cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")
        out["cert_expires_in_s"] = int(cert.not_valid_after_utc.timestamp() - time.time())
    if kv.get("server") and kv.get("ca_pem"):
        out["controller_reachable"] = _reachable(kv["server"], kv["ca_pem"])
    return out


def _reachable(server: str, ca_pem: str) -> bool:
    ctx = ssl.create_default_context(cadata=ca_pem)
    try:
        with urllib.request.urlopen(server.rstrip("/") + "/healthz", timeout=3, context=ctx) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


def ago(ts: float, now: float) -> str:
    """'never', '12s ago', '5m ago', '3h 4m ago', '2d 5h ago'."""
    if ts <= 0:
        return "never"
    secs = max(0, int(now - ts))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    if secs < 86400:
        return f"{secs // 3600}h {secs % 3600 // 60}m ago"
    return f"{secs // 86400}d {secs % 86400 // 3600}h ago"


def human_bytes(n: int) -> str:
    """'512 B', '1.5 KiB', '12.0 MiB', '3.2 GiB' (binary units, one decimal)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _peer_row(p: PeerStatus, now: float) -> dict[str, Any]:
    path = p.path + (f" {p.relay_region}" if p.relay_region else "")
    loss = f"{(1 - p.probes_answered / p.probes_sent) * 100:.0f} %" if p.probes_sent else "-"
    return {
        "name": p.name or p.public_key[:8],
        "address": ",".join(p.allowed_ips),
        "endpoint": p.endpoint or "-",
        "handshake": ago(p.last_handshake, now),
        "rx": human_bytes(p.rx_bytes),
        "tx": human_bytes(p.tx_bytes),
        "path": path,
        "rtt": "-" if p.rtt_ms is None else f"{p.rtt_ms:.1f} ms",
        "loss": loss,
    }


def cmd_status(args: argparse.Namespace) -> int:
    st = device_status(args.socket)
    facts = ctrl_facts(args.ctrl_state_dir)
    if args.json:
        print(json.dumps({**facts, "device": st.model_dump()}, indent=2))
        return 0
    rows = [
        ("node", f"{facts.get('node_name', '?')} (id {facts.get('node_id', '?')})"),
        ("address", facts.get("address", "?")),
        ("cvlan", facts.get("cvlan_name", "?")),
        ("controller", _controller_line(facts)),
        ("certificate expires", _expiry_line(facts)),
        ("interface", f"{st.interface} ({st.engine}), port {st.listen_port}" + (", DOWN" if st.down else "")),
        ("applied map version", str(st.applied_version)),
        ("local endpoints", ", ".join(st.local_endpoints) or "-"),
        ("peers", f"{len(st.peers)} ({sum(p.path == 'direct' for p in st.peers)} direct)"),
        ("dns", _dns_line(st.dns)),
        ("exit node", _exit_line(st)),
        ("subnet routes", ", ".join(f"{r} via {n}" for r, n in st.routes.items()) or "-"),
        ("forwards for peers", ", ".join(st.forwarding) or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


def _expiry_line(facts: dict[str, Any]) -> str:
    """'2026-12-13T10:00:00Z (expires in 6d 23h)'; '?' when cvlan-ctrl's state cannot be read."""
    at = facts.get("cert_not_after")
    if not at:
        return "?"
    left = facts.get("cert_expires_in_s")
    return f"{at} (expires in {expires_in(left)})" if left and left > 0 else f"{at} (expired)"


def _dns_line(d: DnsStatus | None) -> str:
    if d is None:
        return "off (no names from the controller, dns mode off, or down)"
    where = f"resolver {d.resolver}" if d.resolver else "resolver not listening"
    line = f"{d.zone}: {where}, {d.names} names, host via {d.host_config}"
    return line + (f"; ERROR {d.error}" if d.error else "")


def _exit_line(st: DeviceStatus) -> str:
    if not st.exit_node:
        return "- (internet traffic goes the host's own way)"
    if st.exit_node_error:
        return f"{st.exit_node} NOT IN USE: {st.exit_node_error}"
    return f"{st.exit_node} (all internet traffic goes through it)"


def _controller_line(facts: dict[str, Any]) -> str:
    if "server" not in facts:
        return "? (cvlan-ctrl state not readable)"
    return f"{facts['server']} ({'reachable' if facts.get('controller_reachable') else 'unreachable'})"


def cmd_peers(args: argparse.Namespace) -> int:
    st = device_status(args.socket)
    if args.json:
        print(json.dumps([p.model_dump() for p in st.peers], indent=2))
        return 0
    now = time.time()
    print_table(
        [_peer_row(p, now) for p in st.peers],
        ["name", "address", "endpoint", "handshake", "rx", "tx", "path", "rtt", "loss"],
    )
    return 0


def find_peer(st: DeviceStatus, ref: str) -> PeerStatus:
    """A peer by name, overlay IP or public-key prefix; CliError if none or ambiguous."""
    hits = [
        p
        for p in st.peers
        if p.name == ref
        or ref in {a.split("/")[0] for a in p.allowed_ips}
        or (len(ref) >= 8 and p.public_key.startswith(ref))
    ]
    if not hits:
        raise CliError(f"no peer {ref!r} (see `cvlancli peers`)")
    if len(hits) > 1:
        raise CliError(f"peer {ref!r} is ambiguous: {', '.join(p.name for p in hits)}")
    return hits[0]


def cmd_ping(args: argparse.Namespace) -> int:
    peer = find_peer(device_status(args.socket), args.peer)
    host = next((a.split("/")[0] for a in peer.allowed_ips if a.endswith("/32")), "")
    if not host:
        raise CliError(f"peer {args.peer!r} has no /32 overlay address to ping")
    r = subprocess.run(
        ["ping", "-n", "-q", "-c", str(args.count), "-W", "2", host],
        capture_output=True,
        text=True,
        timeout=args.count * 3 + 10,
    )
    received = _received(r.stdout)
    after = find_peer(device_status(args.socket), args.peer)
    result = {
        "peer": after.name,
        "address": host,
        "sent": args.count,
        "received": received,
        "path": after.path,
        "endpoint": after.endpoint,
    }
    if args.json:
        print(json.dumps(result))
    else:
        via = f"{after.path} via {after.endpoint}" if after.endpoint else after.path
        print(f"{after.name} ({host}): {received}/{args.count} replies, path {via}")
    return 0 if received > 0 else 1


def _received(ping_out: str) -> int:
    for line in ping_out.splitlines():
        if "received" in line:
            for part in line.split(","):
                if part.strip().endswith("received"):
                    return int(part.split()[0])
    return 0


def cmd_netcheck(args: argparse.Namespace) -> int:
    st = device_status(args.socket)
    facts = ctrl_facts(args.ctrl_state_dir)
    paths = {k: sum(p.path == k for p in st.peers) for k in ("direct", "relay", "vrouter", "none")}
    local_ips = [e.rsplit(":", 1)[0].strip("[]") for e in st.local_endpoints]
    targets = [netcheck.StunTarget(r.region, r.url, r.stun) for r in st.relays if r.stun]
    net = asyncio.run(netcheck.run(targets, local_ips, timeout=args.timeout))
    report = {
        **net.as_dict(),
        "wireguard_port": st.listen_port,
        "wireguard_mapped_endpoint": st.mapped_endpoint,
        "local_endpoints": st.local_endpoints,
        "home_relay_region": st.home_relay_region,
        "controller_reachable": facts.get("controller_reachable"),
        "peers_by_path": paths,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_netcheck(net, st, facts, paths, bool(targets))
    return 0


def _print_netcheck(
    net: netcheck.NetReport, st: DeviceStatus, facts: dict[str, Any], paths: dict[str, int], any_stun: bool
) -> None:
    reach = facts.get("controller_reachable")
    rows = [
        ("UDP", ("yes" if net.udp else "BLOCKED (no STUN answer)") if any_stun else "? (no relay has STUN)"),
        ("IPv4", f"yes, {net.mapped_endpoint}" if net.ipv4 else "no"),
        ("IPv6", ipv6_line(net)),
        ("NAT", _nat_line(net.nat)),
        ("WireGuard port", f"{st.listen_port}, mapped {st.mapped_endpoint or 'unknown'}"),
        ("local endpoints", ", ".join(st.local_endpoints) or "-"),
        ("home relay", st.home_relay_region or "-"),
        ("controller", "?" if reach is None else "reachable" if reach else "unreachable"),
        ("peers", ", ".join(f"{n} {k}" for k, n in paths.items())),
    ]
    for k, v in rows:
        print(f"{k:<16}  {v}")
    print("relay latency:")
    for a in sorted(net.answers, key=lambda a: (a.rtt_ms is None, a.rtt_ms or 0.0)):
        rtt = f"{a.rtt_ms:.1f} ms" if a.rtt_ms is not None else a.error
        over = " (IPv6)" if a.family == 6 else ""
        print(f"  {a.region:<12} {a.server + over:<31} {rtt}")


def ipv6_line(net: netcheck.NetReport) -> str:
    if net.ipv6:
        return f"yes, {net.mapped_endpoint_v6}"
    if any(a.family == 6 for a in net.answers):
        return "no (no relay answered over IPv6)"
    return "no (no relay has an IPv6 STUN address)" + (", global address present" if net.ipv6_address else "")


def _nat_line(nat: str) -> str:
    return {
        "none": "none (public address)",
        "port-preserving": "port-preserving (endpoint-independent, same port): direct paths work",
        "endpoint-independent": "endpoint-independent mapping: direct paths work",
        "endpoint-dependent": "endpoint-dependent (symmetric): peers reach this node through a relay",
        "unknown": "unknown (fewer than two STUN servers answered)",
    }[nat]


def cmd_down(args: argparse.Namespace) -> int:
    st = DeviceStatus.model_validate(ipc(args.socket, "down", timeout=30.0))
    if args.json:
        print(json.dumps(st.model_dump(), indent=2))
        return 0
    print(
        f"down: {st.interface} removed (tunnel, routes, firewall); identity and address "
        f"{st.address or '-'} kept; stays down across restarts until `cvlancli up`"
    )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    body = {} if args.exit_node is None else {"exit_node": args.exit_node}
    st = DeviceStatus.model_validate(ipc(args.socket, "up", timeout=30.0, **body))
    if args.json:
        print(json.dumps(st.model_dump(), indent=2))
        return 0
    if args.exit_node is not None:
        print(f"exit node: {_exit_line(st)}")
    if not st.address:
        print(f"up: {st.interface} running; no map from cvlan-ctrl yet (is cvlan-ctrl running?)")
    else:
        print(f"up: {st.interface} back on the network with address {st.address}")
    return 0


def _common(suppress: bool) -> argparse.ArgumentParser:
    # The options are accepted before and after the subcommand; the subcommand's copy must not
    # overwrite a value given before it with its default, hence SUPPRESS there.
    def d(v: object) -> object:
        return argparse.SUPPRESS if suppress else v

    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    c.add_argument(
        "--socket",
        type=Path,
        default=d(DEFAULT_SOCKET),
        help=f"cvland's IPC socket (default {DEFAULT_SOCKET})",
    )
    c.add_argument(
        "--ctrl-state-dir",
        type=Path,
        default=d(DEFAULT_CTRL_STATE),
        help=f"cvlan-ctrl's state directory, for controller facts (default {DEFAULT_CTRL_STATE})",
    )
    return c


def parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    p = argparse.ArgumentParser(prog="cvlancli", description=__doc__, parents=[_common(suppress=False)])
    add_version_flag(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "status", parents=[common], help="this node: address, CVLAN, controller, certificate, interface"
    )
    sub.add_parser(
        "peers", parents=[common], help="peers: address, endpoint, last handshake, bytes, path, RTT, loss"
    )
    ping = sub.add_parser("ping", parents=[common], help="ping a peer (by name, overlay IP or key prefix)")
    ping.add_argument("peer")
    ping.add_argument("-c", "--count", type=int, default=3, help="echo requests to send (default 3)")
    nc = sub.add_parser(
        "netcheck",
        parents=[common],
        help="UDP, NAT type (STUN to every relay), mapped endpoints, relay latency, STUN over IPv4 and IPv6",
    )
    nc.add_argument(
        "--timeout", type=float, default=1.0, help="seconds to wait for each STUN answer (default 1)"
    )
    sub.add_parser(
        "down",
        parents=[common],
        help="take this node off the network (tunnel, routes, firewall removed; identity kept) until `up`",
    )
    up = sub.add_parser(
        "up",
        parents=[common],
        help="put this node back on the network after `down`; select an exit node",
    )
    up.add_argument(
        "--exit-node",
        metavar="NAME",
        help="send all internet traffic through this peer (an approved exit node); '' for none, which "
        "restores the host's own routing (docs/EXIT-NODES.md)",
    )
    return p


COMMANDS = {
    "status": cmd_status,
    "peers": cmd_peers,
    "ping": cmd_ping,
    "netcheck": cmd_netcheck,
    "down": cmd_down,
    "up": cmd_up,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "ping" and not 1 <= args.count <= 100:
        print("cvlancli: --count must be 1-100", file=sys.stderr)
        return 2
    if args.cmd == "netcheck" and not 0.05 <= args.timeout <= 10:
        print("cvlancli: --timeout must be 0.05-10 seconds", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.cmd](args)
    except CliError as e:
        print(f"cvlancli: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
