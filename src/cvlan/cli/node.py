"""cvlancli: look at this node's CVLAN data plane (status, peers, ping, netcheck), take it off the
network and back (down, up).

Talks to the local cvland over its IPC socket (root or the socket's group) and, for controller and
certificate facts, reads cvlan-ctrl's state directory when it is readable."""

from __future__ import annotations

import argparse
import json
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cvlan.cli.table import print_table
from cvlan.client.ipc import IpcError, request_once
from cvlan.common.version import add_version_flag
from cvlan.wire.ipc import DeviceStatus, DnsStatus, PeerStatus

DEFAULT_SOCKET = Path("/run/cvland/cvland.sock")
DEFAULT_CTRL_STATE = Path("/var/lib/cvlan-ctrl")


class CliError(Exception):
    """One line for stderr; exit status 1."""


def ipc(path: Path, op: str, timeout: float = 5.0) -> dict[str, Any]:
    """One request to cvland; CliError with a clear line if it is not there or refuses."""
    try:
        ans = request_once(path, op, timeout)
    except FileNotFoundError:
        raise CliError(f"cvland is not running (no socket at {path})") from None
    except PermissionError:
        raise CliError(f"no permission to open {path} (run as root or in the socket's group)") from None
    except OSError as e:
        raise CliError(f"cvland on {path}: {e.strerror or e}") from None
    except IpcError:
        raise CliError(f"cvland on {path} sent no valid answer") from None
    if not ans.get("ok"):
        raise CliError(f"cvland refused {op}: {ans.get('error', 'no reason given')}")
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


def _ago(ts: float, now: float) -> str:
    if ts <= 0:
        return "never"
    secs = max(0, int(now - ts))
    return f"{secs}s ago" if secs < 120 else f"{secs // 60}m ago"


def _peer_row(p: PeerStatus, now: float) -> dict[str, Any]:
    return {
        "name": p.name or p.public_key[:8],
        "address": ",".join(p.allowed_ips),
        "endpoint": p.endpoint or "-",
        "handshake": _ago(p.last_handshake, now),
        "rx": p.rx_bytes,
        "tx": p.tx_bytes,
        "path": p.path,
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
        ("certificate expires", facts.get("cert_not_after", "?")),
        ("interface", f"{st.interface} ({st.engine}), port {st.listen_port}" + (", DOWN" if st.down else "")),
        ("applied map version", str(st.applied_version)),
        ("local endpoints", ", ".join(st.local_endpoints) or "-"),
        ("peers", f"{len(st.peers)} ({sum(p.path == 'direct' for p in st.peers)} direct)"),
        ("dns", _dns_line(st.dns)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


def _dns_line(d: DnsStatus | None) -> str:
    if d is None:
        return "off (no names from the controller, dns mode off, or down)"
    where = f"resolver {d.resolver}" if d.resolver else "resolver not listening"
    line = f"{d.zone}: {where}, {d.names} names, host via {d.host_config}"
    return line + (f"; ERROR {d.error}" if d.error else "")


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
        ["name", "address", "endpoint", "handshake", "rx", "tx", "path"],
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
    paths = {k: sum(p.path == k for p in st.peers) for k in ("direct", "relay", "none")}
    report = {
        "udp_port": st.listen_port,
        "local_endpoints": st.local_endpoints,
        "mapped_endpoint": st.mapped_endpoint,
        "home_relay_region": st.home_relay_region,
        "controller_reachable": facts.get("controller_reachable"),
        "peers_by_path": paths,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"UDP port            {st.listen_port}")
    print(f"local endpoints     {', '.join(st.local_endpoints) or '-'}")
    print(f"mapped (STUN)       {st.mapped_endpoint or 'unknown'}")
    print(f"home relay          {st.home_relay_region or '-'}")
    reach = facts.get("controller_reachable")
    print(f"controller          {'?' if reach is None else 'reachable' if reach else 'unreachable'}")
    print(
        f"peers               {paths['direct']} direct, {paths['relay']} relay, {paths['none']} not connected"
    )
    return 0


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
    st = DeviceStatus.model_validate(ipc(args.socket, "up", timeout=30.0))
    if args.json:
        print(json.dumps(st.model_dump(), indent=2))
        return 0
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
    sub.add_parser("peers", parents=[common], help="peers: address, endpoint, last handshake, bytes, path")
    ping = sub.add_parser("ping", parents=[common], help="ping a peer (by name, overlay IP or key prefix)")
    ping.add_argument("peer")
    ping.add_argument("-c", "--count", type=int, default=3, help="echo requests to send (default 3)")
    sub.add_parser(
        "netcheck", parents=[common], help="endpoints, STUN mapping, relay, controller reachability"
    )
    sub.add_parser(
        "down",
        parents=[common],
        help="take this node off the network (tunnel, routes, firewall removed; identity kept) until `up`",
    )
    sub.add_parser("up", parents=[common], help="put this node back on the network after `down`")
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
    try:
        return COMMANDS[args.cmd](args)
    except CliError as e:
        print(f"cvlancli: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
