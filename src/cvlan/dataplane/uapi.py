"""The WireGuard cross-platform UAPI: the diff that turns one config into another, the parser of
`get=1` answers, and a client of the Unix socket (/var/run/wireguard/<if>.sock)."""

from __future__ import annotations

import socket
from pathlib import Path

from cvlan.dataplane.wgconfig import DeviceState, PeerState, WgConfig, WgPeer
from cvlan.wire.keys import KeyHex, public_of

SOCKET_DIR = Path("/var/run/wireguard")
_MAX_REPLY = 16 << 20


class UapiError(Exception):
    """A UAPI request was refused (errno != 0) or the socket misbehaved."""


def to_uapi(cfg: WgConfig, prev: WgConfig | None) -> str:
    """Return the UAPI `set=1` body that turns prev into cfg ("" when nothing changed).

    Unchanged peers are omitted; departed peers get remove=true; allowed IPs are replaced only
    when they changed; persistent_keepalive_interval is written last because setting it can
    trigger a handshake (and it is rewritten when the endpoint changed, to probe the new one
    at once). prev=None means a fresh device: replace_peers=true drops anything left on it."""
    lines: list[str] = []
    if prev is None or cfg.private_key != prev.private_key:
        lines.append(f"private_key={cfg.private_key}")
    if prev is None or cfg.listen_port != prev.listen_port:
        lines.append(f"listen_port={cfg.listen_port}")
    if (prev is None and cfg.fwmark) or (prev is not None and cfg.fwmark != prev.fwmark):
        lines.append(f"fwmark={cfg.fwmark}")
    if prev is None:
        lines.append("replace_peers=true")
    old_peers = {p.public_key: p for p in prev.peers} if prev is not None else {}
    new_keys = {p.public_key for p in cfg.peers}
    for key in sorted(old_peers.keys() - new_keys):
        lines += [f"public_key={key}", "remove=true"]
    keepalives: list[WgPeer] = []
    for p in cfg.peers:
        old = old_peers.get(p.public_key)
        if old == p:
            continue
        body = _peer_body(p, old)
        if body:
            lines += [f"public_key={p.public_key}", *body]
        moved = old is not None and p.endpoint and p.endpoint != old.endpoint
        if old is None or p.keepalive != old.keepalive or (moved and p.keepalive):
            keepalives.append(p)
    for p in keepalives:
        lines += [f"public_key={p.public_key}", f"persistent_keepalive_interval={p.keepalive}"]
    if not lines:
        return ""
    return "set=1\n" + "".join(line + "\n" for line in lines) + "\n"


def _peer_body(p: WgPeer, old: WgPeer | None) -> list[str]:
    out: list[str] = []
    if old is None:
        # A new peer must exist even with no endpoint and no allowed IPs.
        out.append("replace_allowed_ips=true")
        out += [f"allowed_ip={a}" for a in p.allowed_ips]
        if p.endpoint:
            out.insert(0, f"endpoint={p.endpoint}")
        return out
    if p.endpoint and p.endpoint != old.endpoint:
        out.append(f"endpoint={p.endpoint}")
    if sorted(p.allowed_ips) != sorted(old.allowed_ips):
        out.append("replace_allowed_ips=true")
        out += [f"allowed_ip={a}" for a in p.allowed_ips]
    return out


def parse_get(text: str) -> DeviceState:
    """Parse a `get=1` answer (key=value lines ending in errno=N) into a DeviceState."""
    st = DeviceState()
    cur: PeerState | None = None
    errno: int | None = None
    for line in text.splitlines():
        if not line:
            continue
        k, sep, v = line.partition("=")
        if not sep:
            raise UapiError(f"get: malformed line {line[:40]!r}")
        if k == "errno":
            errno = int(v)
        elif k == "public_key":
            cur = PeerState(public_key=KeyHex(v))
            st.peers[cur.public_key] = cur
        elif cur is None:
            _device_field(st, k, v)
        else:
            _peer_field(cur, k, v)
    if errno is None:
        raise UapiError("get: answer has no errno line")
    if errno != 0:
        raise UapiError(f"get: errno={errno}")
    return st


def _device_field(st: DeviceState, k: str, v: str) -> None:
    if k == "listen_port":
        st.listen_port = int(v)
    elif k == "private_key":
        st.public_key = public_of(KeyHex(v))


def _peer_field(p: PeerState, k: str, v: str) -> None:
    if k == "endpoint":
        p.endpoint = v
    elif k == "last_handshake_time_sec":
        p.last_handshake += int(v)
    elif k == "last_handshake_time_nsec":
        p.last_handshake += int(v) / 1e9
    elif k == "rx_bytes":
        p.rx_bytes = int(v)
    elif k == "tx_bytes":
        p.tx_bytes = int(v)
    elif k == "persistent_keepalive_interval":
        p.keepalive = int(v)
    elif k == "allowed_ip":
        p.allowed_ips.append(v)


def parse_set_reply(text: str) -> None:
    """Raise UapiError unless a `set=1` answer says errno=0."""
    for line in text.splitlines():
        if line.startswith("errno="):
            errno = int(line[6:])
            if errno != 0:
                raise UapiError(f"set: errno={errno}")
            return
    raise UapiError("set: answer has no errno line")


class UapiClient:
    """Blocking requests on a device's UAPI socket; each request opens a fresh connection."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def set(self, body: str) -> None:
        if body:
            parse_set_reply(self._request(body))

    def get(self) -> DeviceState:
        return parse_get(self._request("get=1\n\n"))

    def _request(self, body: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
                s.sendall(body.encode())
                return _read_reply(s)
            except OSError as e:
                raise UapiError(f"uapi {self.path.name}: {e}") from e


def _read_reply(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n\n") or b"errno=" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > _MAX_REPLY:
            raise UapiError("uapi reply too long")
    return buf.decode()
