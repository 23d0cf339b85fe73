"""The full stack in namespaces: a controller subprocess on the fake internet, and nodes that each run
cvland + cvlan-ctrl through their console scripts. Used by the end-to-end tests and the demo."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlan.common import adminconf
from cvlan.devtools.harness.controller import ready_step, serve_argv, wait_ready
from cvlan.devtools.harness.enrol import ctrl_argv, make_token_sync
from cvlan.wire.ipc import DeviceStatus
from tests.harness.cvland import Dataplane, start_cvland
from tests.harness.netns import Lab, Netns, Proc
from tests.harness.nsconnect import NsApi

CONTROLLER_PORT = 8443
LONG_POLL_S = 5
"""The long-poll every test node asks for (--long-poll)."""


def wait_until(what: str, fn: Any, timeout: float, interval: float = 0.5) -> Any:
    """Call fn until it returns something truthy; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:  # keep trying until the deadline; report the last error
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not true after {timeout:.0f} s (last: {last!r})")


@dataclass
class Controller:
    """cvlan-controller serve inside namespace ns, with SQLite in data_dir."""

    lab: Lab
    ns: Netns
    data_dir: Path
    env: dict[str, str]
    proc: Proc | None = None
    api: NsApi | None = None
    ca_pin: str = ""
    args: tuple[str, ...] = ()
    """More `serve` flags (e.g. --proxy-socket)."""

    @property
    def url(self) -> str:
        return f"https://{self.ns.ip}:{CONTROLLER_PORT}"

    def start(self) -> Controller:
        listen = f"{self.ns.ip}:{CONTROLLER_PORT}"
        self.proc = self.ns.spawn(
            "controller", *serve_argv(self.data_dir, listen, extra=self.args), env=self.env
        )
        proc = self.proc
        conf = wait_ready(
            lambda: ready_step(self.data_dir, proc.alive, proc.output, check=self._answers), timeout=60
        )
        self.api = NsApi(self.ns.name, self.url, conf.token, conf.ca_pem)
        return self

    def _answers(self, conf: adminconf.AdminConf) -> bool:
        try:
            return NsApi(self.ns.name, self.url, conf.token, conf.ca_pem).request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def token(self, tenant: str, cvlan: str, reusable: bool = True) -> tuple[str, str]:
        """Create tenant and CVLAN if needed; return (token, join command)."""
        assert self.api is not None
        t = make_token_sync(self.api.request, tenant, cvlan, reusable=reusable)
        return str(t["token"]), str(t["join_command"])

    def nodes(self, tenant: str) -> list[dict[str, Any]]:
        assert self.api is not None
        page = self.api.get(f"/api/v1/tenants/{tenant}/nodes?limit=500")
        items: list[dict[str, Any]] = page["items"] if isinstance(page, dict) else page
        return items


def start_controller(lab: Lab, poll_interval_s: int = 5, args: tuple[str, ...] = ()) -> Controller:
    """A controller on the fake internet at a public address, SQLite, plain defaults otherwise."""
    ns = lab.public_host("ctl")
    env = {"CVLAN_CONTROLLER_POLL_INTERVAL_S": str(poll_interval_s)}
    return Controller(lab, ns, lab.dir / "controller", env, args=args).start()


@dataclass
class Node:
    """A machine in the mesh: cvland (root) and cvlan-ctrl (agent) in one namespace."""

    ns: Netns
    name: str
    ctrl_state: Path
    dp: Dataplane
    ctrl: Proc | None = None
    listen_port: int = 51820
    tag: str = ""
    ctrl_args: tuple[str, ...] = ()
    """More cvlan-ctrl flags (e.g. --advertise-routes, --report-interval 2), given at every start."""

    def start_ctrl(self, join_command: str = "", token_file: Path | None = None) -> Proc:
        """cvlan-ctrl in the node's namespace: enrolling with join_command or token_file if given,
        else from its state directory."""
        extra = ["--long-poll", str(LONG_POLL_S), "--listen-port", str(self.listen_port), *self.ctrl_args]
        if token_file is not None:
            extra += ["--token-file", str(token_file)]
        argv = ctrl_argv(self.ctrl_state, self.dp.socket, self.name, join_command, *extra)
        self.ctrl = self.ns.spawn(f"cvlan-ctrl{self.tag}", *argv)
        return self.ctrl

    def stop_ctrl(self) -> None:
        if self.ctrl is not None:
            self.ctrl.stop()
            self.ctrl = None

    def status(self) -> DeviceStatus:
        return self.dp.status()

    def restart(self, lab: Lab) -> None:
        """Stop cvlan-ctrl and cvland (SIGTERM), start both again from their state dirs, no token."""
        self.stop_ctrl()
        self.dp.proc.stop()
        self.dp = start_cvland(
            lab,
            self.ns,
            ifname=self.dp.ifname,
            state_dir=self.dp.state_dir,
            tag=self.tag,
            dns_mode=self.dp.dns_mode,
        )
        self.start_ctrl()

    def address(self) -> str:
        """The overlay address cvland applied ("" before the first map)."""
        import json

        try:
            d = json.loads((self.dp.state_dir / "desired.json").read_text())
        except (OSError, ValueError):
            return ""
        return str(d.get("address", "")).split("/")[0]

    def wait_ready(self, peers: int, timeout: float = 60.0) -> DeviceStatus:
        """Wait until cvland has applied a map with this many peers."""

        def ready() -> DeviceStatus | None:
            if self.ctrl is not None and not self.ctrl.alive():
                raise RuntimeError(f"cvlan-ctrl on {self.name} exited:\n{self.ctrl.output()[-2000:]}")
            st = self.status()
            return st if st.applied_version > 0 and len(st.peers) == peers else None

        try:
            st: DeviceStatus = wait_until(f"{self.name} has {peers} peers", ready, timeout)
        except TimeoutError as e:
            log = self.ctrl.output()[-3000:] if self.ctrl else ""
            raise TimeoutError(f"{e}\n--- cvlan-ctrl log ---\n{log}") from None
        return st


def start_node(
    lab: Lab,
    ns: Netns,
    name: str,
    join_command: str,
    listen_port: int = 51820,
    tag: str = "",
    dns_mode: str = "off",
    ctrl_args: tuple[str, ...] = (),
) -> Node:
    """Start cvland then cvlan-ctrl (enrolling with the join command) in ns.

    Several nodes may share a namespace (one per CVLAN) with distinct tags and listen ports."""
    dp = start_cvland(lab, ns, tag=tag, dns_mode=dns_mode)
    node = Node(
        ns, name, lab.dir / f"{ns.short}{tag}-ctrl", dp, listen_port=listen_port, tag=tag, ctrl_args=ctrl_args
    )
    node.start_ctrl(join_command)
    return node
