"""`cvlan-ctrl join`: configure a freshly installed node in one command.

Order matters for "nothing half-configured": the token is read and checked, the state dir is checked
for an existing identity, the WireGuard engine is looked for, then the node enrols (discover with the
CA pin, register) in memory. Only an enrolment that succeeded is written to the state dir; then the
services are started and join waits until cvland has applied this node's map."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cvlan.agent.daemon import Agent, FatalError, Options
from cvlan.agent.state import STATE_FILE, Identity, StateError, StateStore
from cvlan.client import tls
from cvlan.client.controller import ControlError
from cvlan.client.ipc import IpcClient, IpcError
from cvlan.dataplane.engine import kernel_has_wireguard
from cvlan.wire.ipc import DeviceStatus

PACKAGED_STATE = Path("/var/lib/cvlan-ctrl")
PACKAGED_SOCKET = Path("/run/cvland/cvland.sock")
"""Where the packaged cvland.service listens (cvland --socket /run/cvland/cvland.sock)."""
SERVICES = ("cvland", "cvlan-ctrl")
SYSTEMD_RUNNING = Path("/run/systemd/system")
TOKEN_ENV = "CVLAN_TOKEN"
ARGV_TOKEN = (
    "a token on the command line ends up in `ps` and shell history: "
    "use --token-file FILE, --token - (stdin) or the CVLAN_TOKEN environment variable"
)


class JoinError(Exception):
    """One line on stderr, exit status `status`; nothing was written unless the line says so."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class JoinRequest:
    server: str
    token: str
    ca_pin: str
    state_dir: Path
    cvland_socket: Path
    service_manager: str
    """"systemd" or "none" (auto already resolved)."""
    timeout_s: float
    force: bool
    hostname: str = ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvlan-ctrl join",
        description="Join this machine to a CVLAN: enrol with the controller (CA pin checked), write the "
        "node's identity to the state dir, start cvland and cvlan-ctrl, wait until the node is online "
        "and print its overlay address. The token is read from a file, stdin or CVLAN_TOKEN, never "
        "from the command line.",
        epilog="Example: cvlan-ctrl join --server https://ctl.example.net:8443 --ca-pin sha256:... "
        "--token-file /root/cvlan.token",
    )
    p.add_argument("--server", required=True, help="controller URL, e.g. https://ctl.example.net:8443")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--token-file", type=Path, metavar="FILE", help="read the enrollment token from FILE")
    src.add_argument(
        "--token", metavar="-", help="'-' reads the enrollment token from stdin (no other value is accepted)"
    )
    p.add_argument("--ca-pin", help="sha256:HEX fingerprint of the controller CA (printed with the token)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=PACKAGED_STATE,
        help=f"cvlan-ctrl's state directory (default {PACKAGED_STATE})",
    )
    p.add_argument(
        "--cvland-socket",
        type=Path,
        default=PACKAGED_SOCKET,
        help=f"cvland's IPC socket, to see the node come online (default {PACKAGED_SOCKET})",
    )
    p.add_argument(
        "--service-manager",
        choices=("auto", "systemd", "none"),
        default="auto",
        help="systemd: enable and start cvland and cvlan-ctrl; none: start nothing (the daemons are "
        "supervised otherwise); auto (default): systemd if it is running, else none",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up enrolling, and waiting for the node to come online, after this long (default 120)",
    )
    p.add_argument(
        "--force", action="store_true", help="join again although this node already has an identity"
    )
    p.add_argument("--hostname", default="", help="node name to ask for (default: this machine's hostname)")
    return p


def read_token(ns: argparse.Namespace, stdin: TextIO, env: dict[str, str]) -> str:
    """The token from --token-file, --token - (stdin) or CVLAN_TOKEN; JoinError (status 2) otherwise."""
    if ns.token is not None and ns.token != "-":
        raise JoinError(ARGV_TOKEN, 2)
    if ns.token_file is not None:
        try:
            text: str = ns.token_file.read_text()
        except OSError as e:
            raise JoinError(f"cannot read token file {ns.token_file}: {e.strerror or e}", 2) from e
        where = f"token file {ns.token_file}"
    elif ns.token == "-":
        # At a terminal, ask without echo; a pipe is read as it is.
        text = getpass.getpass("enrollment token: ") if stdin.isatty() else stdin.readline()
        where = "stdin"
    elif env.get(TOKEN_ENV):
        text, where = env[TOKEN_ENV], TOKEN_ENV
    else:
        raise JoinError(
            "no enrollment token: use --token-file FILE, --token - (stdin) or CVLAN_TOKEN "
            "(see `cvlan token create`)",
            2,
        )
    token: str = text.strip()
    if not token or any(c.isspace() for c in token):
        raise JoinError(f"{where} does not hold one enrollment token", 2)
    return token


def resolve_service_manager(choice: str, systemd_dir: Path = SYSTEMD_RUNNING) -> str:
    if choice == "auto":
        return "systemd" if systemd_dir.is_dir() else "none"
    return choice


def request_from(ns: argparse.Namespace, stdin: TextIO, env: dict[str, str]) -> JoinRequest:
    token = read_token(ns, stdin, env)
    if not ns.ca_pin:
        raise JoinError("--ca-pin is required (it is printed with the token by `cvlan token create`)", 2)
    try:
        pin = tls.normalize_pin(ns.ca_pin)
    except ValueError as e:
        raise JoinError(str(e), 2) from e
    if not 1 <= ns.timeout <= 3600:
        raise JoinError("--timeout must be 1-3600 seconds", 2)
    return JoinRequest(
        server=ns.server.rstrip("/"),
        token=token,
        ca_pin=pin,
        state_dir=ns.state_dir,
        cvland_socket=ns.cvland_socket,
        service_manager=resolve_service_manager(ns.service_manager),
        timeout_s=ns.timeout,
        force=ns.force,
        hostname=ns.hostname,
    )


def check_not_joined(store: StateStore, force: bool) -> Identity | None:
    """The identity already in the state dir; JoinError if there is one and force is not given."""
    try:
        old = store.load()
    except StateError as e:
        if not force:
            raise JoinError(f"{e} (or run join with --force)") from e
        return None
    if old is not None and not force:
        raise JoinError(
            f"already joined: node {old.node_name} ({host_address(old)}) in CVLAN {old.cvlan_name} "
            f"on {old.server}; `cvlancli status` shows it, `join --force` joins again with the new token"
        )
    return old


def host_address(ident: Identity) -> str:
    """The node's overlay address without its /32."""
    return ident.address.split("/")[0]


def check_writable(state_dir: Path) -> None:
    """JoinError unless the identity can be written to state_dir (or the directory created)."""
    d = state_dir
    while not os.path.exists(d) and d != d.parent:  # False, not an error, where d cannot be seen
        d = d.parent
    if not os.access(d, os.W_OK | os.X_OK):
        raise JoinError(f"cannot write to {state_dir}: permission denied (run join as root)")


def check_engine() -> None:
    """JoinError unless this host has a WireGuard engine cvland can drive."""
    if kernel_has_wireguard() or shutil.which("wireguard-go") or shutil.which("boringtun-cli"):
        return
    raise JoinError(
        "no WireGuard engine: install wireguard-go (apt-get install wireguard-go) or load the "
        "wireguard kernel module"
    )


async def enrol(req: JoinRequest) -> Identity:
    opts = Options(
        server=req.server,
        token=req.token,
        ca_pin=req.ca_pin,
        state_dir=req.state_dir,
        cvland_socket=req.cvland_socket,
        hostname=req.hostname,
        enrol_timeout_s=req.timeout_s,
        backoff_cap_s=min(5.0, req.timeout_s / 4),
    )
    try:
        return await asyncio.wait_for(
            Agent(opts).enrol(req.server, req.token, req.ca_pin), req.timeout_s + 15
        )
    except FatalError as e:
        cause = e.__cause__
        if isinstance(cause, ControlError) and cause.reason in ("unreachable", "timeout"):
            raise JoinError(f"controller {req.server} is unreachable: {_os_reason(cause)}") from e
        raise JoinError(e.message) from e
    except TimeoutError:
        raise JoinError(f"controller {req.server} did not answer within {req.timeout_s:g} s") from None


def _os_reason(e: BaseException) -> str:
    """The operating system's words for a connection failure (e.g. "Connection refused")."""
    seen: BaseException | None = e
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, TimeoutError):
            return "no answer in time"
        os_error = getattr(seen, "os_error", seen)
        if isinstance(os_error, OSError) and os_error.errno:
            return os.strerror(os_error.errno)
        seen = seen.__cause__ or seen.__context__
    return "no connection"


def save_owned(store: StateStore, ident: Identity) -> None:
    """Save the identity; files end up owned by the state dir's owner (the service user), 0600."""
    fresh_dir = not store.dir.exists()
    store.save(ident)
    st = store.dir.stat()
    if os.geteuid() == 0 and not fresh_dir:
        for p in store.dir.iterdir():
            if p.name.startswith(STATE_FILE):
                os.chown(p, st.st_uid, st.st_gid)
    os.chmod(store.path, 0o600)


def start_services(manager: str, rejoin: bool) -> None:
    if manager != "systemd":
        return
    cmds = [["systemctl", "enable", "--now", *SERVICES]]
    if rejoin:
        cmds.append(["systemctl", "restart", "cvlan-ctrl"])
    for cmd in cmds:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise JoinError(f"joined, but `{' '.join(cmd)}` failed: {e}") from e
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["exit status " + str(r.returncode)])[-1]
            raise JoinError(f"joined, but `{' '.join(cmd)}` failed: {why}")


async def wait_online(req: JoinRequest, ident: Identity, deadline: float) -> DeviceStatus:
    """cvland's status once it has applied this node's map; JoinError with the reason at the deadline."""
    ipc = IpcClient(req.cvland_socket, timeout=5.0)
    last = f"cvland is not answering on {req.cvland_socket}"
    try:
        while True:
            try:
                st = await ipc.status()
                if st.node_id == ident.node_id and st.applied_version > 0:
                    return st
                if st.down:
                    last = "the node is down on purpose (`cvlancli up` brings it back)"
                else:
                    last = "cvland runs but has no map for this node yet (is cvlan-ctrl running?)"
            except IpcError as e:
                last = e.message
            if time.monotonic() >= deadline:
                raise JoinError(
                    f"joined as node {ident.node_name} ({host_address(ident)}) but not online after "
                    f"{req.timeout_s:g} s: {last}; see `journalctl -u cvland -u cvlan-ctrl`"
                )
            await asyncio.sleep(0.5)
    finally:
        await ipc.close()


async def join(req: JoinRequest) -> Identity:
    deadline = time.monotonic() + req.timeout_s
    store = StateStore(req.state_dir)
    check_writable(req.state_dir)
    old = check_not_joined(store, req.force)
    check_engine()
    ident = await enrol(req)
    save_owned(store, ident)
    start_services(req.service_manager, rejoin=old is not None)
    # An enrolment that took most of the timeout still leaves the daemons a moment to start.
    await wait_online(req, ident, max(deadline, time.monotonic() + min(10.0, req.timeout_s)))
    return ident
