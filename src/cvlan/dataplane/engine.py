"""WireGuard engines: who owns the interface and how it is configured.

Userspace engines (wireguard-go, boringtun) are child processes serving the UAPI socket; the
kernel engine uses netlink. Each engine reports the PID it started so that a later run can
remove what a crashed one left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Protocol

from cvlan.common.host import pid_alive
from cvlan.dataplane.uapi import SOCKET_DIR, UapiClient, UapiError, to_uapi
from cvlan.dataplane.wgconfig import DeviceState, PeerState, WgConfig
from cvlan.wire.endpoint import split_hostport
from cvlan.wire.keys import KeyHex

log = logging.getLogger(__name__)

ENGINES = ("wireguard-go", "boringtun", "kernel")


class EngineError(Exception):
    """The engine could not be started or configured."""


class WgEngine(Protocol):
    """A WireGuard device named `ifname` that can be configured by diff and read back."""

    name: str
    ifname: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...
    def pid(self) -> int | None: ...
    def configure(self, cfg: WgConfig, prev: WgConfig | None) -> None: ...
    def read(self) -> DeviceState: ...


def kernel_has_wireguard() -> bool:
    """True when the running kernel has the WireGuard module loaded or built in."""
    return Path("/sys/module/wireguard").exists()


def pick_engine(choice: str) -> str:
    """Resolve "auto" to a concrete engine name: the kernel where it has WireGuard, else wireguard-go."""
    if choice == "auto":
        return "kernel" if kernel_has_wireguard() else "wireguard-go"
    if choice not in ENGINES:
        raise EngineError(f"engine {choice!r}: expected one of auto, {', '.join(ENGINES)}")
    return choice


NO_WIREGUARD = (
    "no WireGuard on this host: the kernel has no wireguard module and wireguard-go is not installed "
    "(install the wireguard-go package or use a kernel with WireGuard)"
)


def check_engine(name: str) -> None:
    """Raise EngineError with one line when engine `name` (resolved by pick_engine) cannot run here.

    Checked before anything is changed on the host, so a host without WireGuard gets a clear refusal
    (cvland exits 2, which its systemd unit does not restart) instead of a crash loop."""
    if name == "wireguard-go" and shutil.which("wireguard-go") is None:
        kernel = kernel_has_wireguard()
        raise EngineError("engine wireguard-go: not installed" if kernel else NO_WIREGUARD)
    if name == "boringtun" and not (shutil.which("boringtun-cli") or shutil.which("boringtun")):
        raise EngineError("engine boringtun: boringtun-cli is not installed")
    if name == "kernel" and not kernel_has_wireguard():
        raise EngineError("engine kernel: the running kernel has no wireguard module")


def make_engine(name: str, ifname: str, log_path: Path | None = None) -> WgEngine:
    """Build the engine `name` (already resolved by pick_engine) for interface ifname."""
    if name == "wireguard-go":
        return UserspaceEngine(ifname, "wireguard-go", ["wireguard-go", "-f", ifname], log_path)
    if name == "boringtun":
        binary = shutil.which("boringtun-cli") or shutil.which("boringtun") or "boringtun-cli"
        argv = [binary, "--foreground", "--disable-drop-privileges", ifname]
        return UserspaceEngine(ifname, "boringtun", argv, log_path)
    if name == "kernel":
        return KernelEngine(ifname)
    raise EngineError(f"engine {name!r}: unknown")


class UserspaceEngine:
    """A userspace WireGuard implementation run in the foreground as our child, driven by UAPI."""

    def __init__(self, ifname: str, name: str, argv: list[str], log_path: Path | None = None) -> None:
        self.name = name
        self.ifname = ifname
        self._argv = argv
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.sock = SOCKET_DIR / f"{ifname}.sock"
        self._uapi = UapiClient(self.sock)

    def start(self, timeout: float = 10.0) -> None:
        if shutil.which(self._argv[0]) is None:
            raise EngineError(f"start {self.name}: {self._argv[0]} is not installed")
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # Own process group (a Ctrl-C meant for cvland does not hit the engine before cvland
            # tears down) but the same session: a new session would get its own scheduler
            # autogroup, which caps the engine's CPU share against everything else on the host.
            self._proc = subprocess.Popen(
                self._argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, process_group=0
            )
        finally:
            if not isinstance(out, int):
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EngineError(f"start {self.name} {self.ifname}: exited with {self._proc.returncode}")
            if self.sock.exists():
                with contextlib.suppress(UapiError):
                    self._uapi.get()
                    return
            time.sleep(0.05)
        self.stop()
        raise EngineError(f"start {self.name} {self.ifname}: no UAPI socket after {timeout:.0f} s")

    def stop(self) -> None:
        if self._proc is None:
            return  # never started: the socket path may belong to someone else (shared directory)
        stop_pid(self._proc.pid, self._proc)
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def configure(self, cfg: WgConfig, prev: WgConfig | None) -> None:
        self._uapi.set(to_uapi(cfg, prev))

    def read(self) -> DeviceState:
        return self._uapi.get()


def stop_pid(pid: int, proc: subprocess.Popen[bytes] | None = None, grace: float = 3.0) -> None:
    """SIGTERM pid, wait up to `grace` seconds, then SIGKILL. Missing processes are fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)


def pid_cmdline(pid: int) -> list[str]:
    """The argv of a running process ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class KernelEngine:
    """The in-kernel WireGuard device, created and configured over netlink (pyroute2).

    Used automatically where the kernel has WireGuard. Netlink takes whole peer entries, so the
    diff is computed in Python the same way as for UAPI and only changed peers are written."""

    name = "kernel"

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._up = False

    def start(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=self.ifname, kind="wireguard")
            except Exception as e:  # pyroute2 raises NetlinkError
                raise EngineError(f"start kernel {self.ifname}: {e}") from e
        self._up = True

    def stop(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr, contextlib.suppress(Exception):
            ipr.link("del", ifname=self.ifname)
        self._up = False

    def alive(self) -> bool:
        return self._up

    def pid(self) -> int | None:
        return None

    def configure(self, cfg: WgConfig, prev: WgConfig | None) -> None:
        import base64

        from pyroute2 import WireGuard

        def b64(k: KeyHex) -> str:
            return base64.b64encode(bytes.fromhex(k)).decode()

        old = {p.public_key: p for p in prev.peers} if prev else {}
        with WireGuard() as wg:
            if prev is None or cfg.private_key != prev.private_key or cfg.listen_port != prev.listen_port:
                wg.set(self.ifname, private_key=b64(cfg.private_key), listen_port=cfg.listen_port)
            if (prev is None and cfg.fwmark) or (prev is not None and cfg.fwmark != prev.fwmark):
                wg.set(self.ifname, fwmark=cfg.fwmark)
            for key in old.keys() - {p.public_key for p in cfg.peers}:
                wg.set(self.ifname, peer={"public_key": b64(key), "remove": True})
            for p in cfg.peers:
                if old.get(p.public_key) == p:
                    continue
                peer: dict[str, object] = {
                    "public_key": b64(p.public_key),
                    "allowed_ips": list(p.allowed_ips),
                    "persistent_keepalive": p.keepalive,
                }
                if p.endpoint:
                    peer["endpoint_addr"], peer["endpoint_port"] = split_hostport(p.endpoint)
                wg.set(self.ifname, peer=peer)

    def read(self) -> DeviceState:
        from pyroute2 import WireGuard

        st = DeviceState()
        with WireGuard() as wg:
            for msg in wg.info(self.ifname):
                st.listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or 0)
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    key = KeyHex(bytes(peer.get_attr("WGPEER_A_PUBLIC_KEY")).hex())
                    ps = PeerState(public_key=key)
                    ts = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                    ps.last_handshake = float(ts.get("tv_sec", 0)) if isinstance(ts, dict) else 0.0
                    ps.rx_bytes = int(peer.get_attr("WGPEER_A_RX_BYTES") or 0)
                    ps.tx_bytes = int(peer.get_attr("WGPEER_A_TX_BYTES") or 0)
                    st.peers[key] = ps
        return st


class FakeEngine:
    """An in-memory engine for unit tests: records every diff it was given."""

    def __init__(self, ifname: str = "fake0", name: str = "fake") -> None:
        self.name = name
        self.ifname = ifname
        self.running = False
        self.config: WgConfig | None = None
        self.bodies: list[str] = []
        self.state = DeviceState()
        self.fail_next: Exception | None = None

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False
        self.config = None

    def alive(self) -> bool:
        return self.running

    def pid(self) -> int | None:
        return None

    def configure(self, cfg: WgConfig, prev: WgConfig | None) -> None:
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        self.bodies.append(to_uapi(cfg, prev))
        self.config = cfg
        self.state.listen_port = cfg.listen_port
        for p in cfg.peers:
            self.state.peers.setdefault(p.public_key, PeerState(public_key=p.public_key))
        for k in list(self.state.peers):
            if k not in {p.public_key for p in cfg.peers}:
                del self.state.peers[k]

    def read(self) -> DeviceState:
        return self.state
