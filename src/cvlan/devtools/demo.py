"""`make demo`: the whole CVLAN on one machine.

A controller (SQLite in ./cvlan-data) and three nodes, each in its own network namespace on a fake
internet (node3 behind a home NAT router), join one CVLAN with an enrollment token created through
the management API. The demo prints the node table, pings across the mesh with `cvlancli`, and keeps
everything running until Ctrl-C; then it stops every process it started and removes the namespaces.
Every component runs as its own process through its console script, exactly as an operator would
run it. The management API (and web UI) is forwarded to 127.0.0.1:8443 for the admin CLI.

Without root (or without wireguard-go) only the controller is started."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlan.cli.http import ApiError, Client
from cvlan.cli.table import print_table
from cvlan.common import adminconf
from cvlan.devtools.harness.controller import (
    ControllerNotReady,
    ControllerProcess,
    healthy,
    ready_step,
    script,
    serve_argv,
    wait_ready,
)
from cvlan.devtools.harness.enrol import ctrl_argv, cvland_argv
from cvlan.wire.endpoint import split_hostport

TENANT, CVLAN = "demo", "office"


def wait_controller(
    process_alive: Any, data_dir: Path, server: str, log: str = "above", timeout: float = 60
) -> adminconf.AdminConf:
    """Wait for the controller's admin.conf and for it to answer at server; exit the demo if it does not."""

    def answers(conf: adminconf.AdminConf) -> bool:
        return healthy(dataclasses.replace(conf, server=server))

    def exited() -> str:
        return f"see its log {log}"

    try:
        return wait_ready(lambda: ready_step(data_dir, process_alive, exited, check=answers), timeout)
    except ControllerNotReady as e:
        raise SystemExit(f"demo: {e}") from None


def ensure(client: Client, method: str, path: str, body: dict[str, object]) -> None:
    try:
        client.call(method, path, body)
    except ApiError as e:
        if e.status != 409:
            raise


def provision(client: Client, uses: int) -> dict[str, Any]:
    """Tenant and CVLAN (kept across runs), stale demo nodes removed, a fresh token."""
    ensure(client, "POST", "/api/v1/tenants", {"name": TENANT, "display_name": "Demo tenant"})
    ensure(client, "POST", f"/api/v1/tenants/{TENANT}/cvlans", {"name": CVLAN})
    for n in client.pages(f"/api/v1/tenants/{TENANT}/nodes"):
        client.call("DELETE", f"/api/v1/tenants/{TENANT}/nodes/{n['id']}")
    tok: dict[str, Any] = client.call(
        "POST", f"/api/v1/tenants/{TENANT}/tokens", {"cvlan": CVLAN, "reusable": True, "uses": uses}
    )
    return tok


def _run_until_stopped(alive: Callable[[], bool]) -> None:
    """Wait while the controller runs; Ctrl-C or SIGTERM raise KeyboardInterrupt (see _stopped)."""

    def handler(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    while alive():
        time.sleep(0.5)


def _stopped(mode: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a demo mode (its own clean-up done): an interrupt ends it with 0, a refused API call with
    one line and 1."""
    try:
        return mode(args)
    except KeyboardInterrupt:
        return 0
    except ApiError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


# --- controller only (no root) ---------------------------------------------------------------


def controller_only(args: argparse.Namespace) -> int:
    conf_path = args.data_dir / "admin.conf"
    process = ControllerProcess.spawn(serve_argv(args.data_dir, args.listen), args.data_dir)
    proc = process.proc
    try:
        conf = wait_controller(process.alive, args.data_dir, f"https://{args.listen}")
        client = Client(conf.server, conf.token, conf.ca_pem)
        tok = provision(client, 10)
        print(f"\nCVLAN controller is running (SQLite in {args.data_dir}/, pid {proc.pid}).")
        print(f"A reusable enrollment token (10 uses):\n  {tok['join_command']}")
        _print_admin_hints(conf_path, conf.server)
        print("Press Ctrl-C to stop.", flush=True)
        _run_until_stopped(process.alive)
        return proc.returncode or 0
    finally:
        process.stop(grace=10)


def _print_admin_hints(conf_path: Path, server: str) -> None:
    cli = f".venv/bin/cvlan --config {conf_path} --server {server}"
    print(
        f"""
  API:     {server}/api/v1  (OpenAPI: {server}/api/v1/openapi.json)   Web UI: {server}/ui/
  Admin:   {cli} node list --tenant {TENANT}
           {cli} audit --tenant {TENANT}"""
    )


# --- the full demo ---------------------------------------------------------------------------


@dataclass
class DemoNode:
    name: str
    ns: Any
    socket: Path
    ctrl_state: Path

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [
            script("cvlancli"),
            "--socket",
            str(self.socket),
            "--ctrl-state-dir",
            str(self.ctrl_state),
            *args,
        ]
        r: subprocess.CompletedProcess[str] = self.ns.run(*argv, timeout=timeout)
        return r


def start_node(lab: Any, ns: Any, name: str, join_command: str) -> DemoNode:
    node = DemoNode(name, ns, lab.dir / f"{name}-cvland.sock", lab.dir / f"{name}-ctrl")
    ns.spawn("cvland", *cvland_argv(node.socket, lab.wg_ifname(), lab.dir / f"{name}-cvland"))
    ns.spawn("cvlan-ctrl", *ctrl_argv(node.ctrl_state, node.socket, name, join_command))
    return node


def wait_mesh(nodes: list[DemoNode], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = 0
        for n in nodes:
            r = n.cli("peers", "--json")
            if r.returncode == 0 and len(json.loads(r.stdout)) == len(nodes) - 1:
                ready += 1
        if ready == len(nodes):
            return True
        time.sleep(1)
    return False


def ping_all(nodes: list[DemoNode]) -> bool:
    ok = True
    for a, b in itertools.permutations(nodes, 2):
        line = ""
        for _ in range(10):  # the first handshake can take a few seconds behind the NAT
            r = a.cli("ping", b.name, "-c", "1")
            line = (r.stdout or r.stderr).strip()
            if r.returncode == 0:
                break
        else:
            ok = False
        print(f"  {a.name} -> {line}")
    return ok


def full_demo(args: argparse.Namespace) -> int:
    from cvlan.devtools.lab.netns import Lab
    from cvlan.devtools.lab.nsconnect import TcpForwarder

    host, port = split_hostport(args.listen, any_port=True)
    lab = Lab()
    forwarder: TcpForwarder | None = None
    try:
        ctl = lab.public_host("ctl")
        data_dir = args.data_dir.resolve()
        ctl.spawn("controller", *serve_argv(data_dir, f"{ctl.ip}:8443"))
        try:
            forwarder = TcpForwarder((host, port), ctl.name, (ctl.ip, 8443)).start()
        except OSError as e:
            raise SystemExit(f"demo: cannot listen on {args.listen}: {e.strerror} (use --listen)") from None
        conf_path = args.data_dir / "admin.conf"
        ctl_proc = lab.procs[-1]
        server = f"https://{args.listen}"
        conf = wait_controller(ctl_proc.alive, data_dir, server, log=f"in {ctl_proc.log}")
        client = Client(server, conf.token, conf.ca_pem)
        tok = provision(client, 3)
        join = str(tok["join_command"])
        print(f"controller up in namespace {ctl.name} ({ctl.ip}), logs in {lab.real_dir}")
        print(f"join command: {tok['join_command']}")
        hosts = [lab.public_host("node1"), lab.public_host("node2"), lab.nat_host("node3")[0]]
        nodes = [start_node(lab, ns, f"node{i + 1}", join) for i, ns in enumerate(hosts)]
        if not wait_mesh(nodes):
            print("demo: the nodes did not all receive their peers within 90 s; logs in " + str(lab.real_dir))
            return 1
        print("\nNode table (GET /api/v1/tenants/demo/nodes):")
        rows = client.pages(f"/api/v1/tenants/{TENANT}/nodes")
        print_table(rows, ["id", "name", "address", "online", "endpoints", "cvlan"])
        print("\nPing across the mesh (cvlancli ping, inside each node's namespace):")
        ok = ping_all(nodes)
        _print_look_around(nodes, conf_path, server)
        if args.check:
            return 0 if ok else 1
        print("\nEverything keeps running. Press Ctrl-C to stop and clean up.", flush=True)
        _run_until_stopped(ctl_proc.alive)
        return 1
    finally:
        if forwarder is not None:
            forwarder.close()
        lab.close()
        print("demo: stopped all processes and removed the namespaces", flush=True)


def _print_look_around(nodes: list[DemoNode], conf_path: Path, server: str) -> None:
    n = nodes[0]
    print("\nLook around (as root, in another shell):")
    print(
        f"  ip netns exec {n.ns.name} {script('cvlancli')} --socket {n.socket} "
        f"--ctrl-state-dir {n.ctrl_state} peers"
    )
    _print_admin_hints(conf_path, server)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cvlan-demo", description=__doc__)
    p.add_argument(
        "--data-dir", type=Path, default=Path("cvlan-data"), help="controller data (default cvlan-data)"
    )
    p.add_argument(
        "--listen", default="127.0.0.1:8443", help="where the API is reachable (default 127.0.0.1:8443)"
    )
    p.add_argument("--check", action="store_true", help="exit after the pings: 0 if every pair answered")
    p.add_argument(
        "--controller-only", action="store_true", help="start only the controller (no root needed)"
    )
    args = p.parse_args(argv)
    missing = [b for b in ("ip", "nft", "wireguard-go", "ping") if shutil.which(b) is None]
    if args.controller_only or os.geteuid() != 0 or missing:
        if not args.controller_only:
            why = "not root" if os.geteuid() != 0 else f"missing {', '.join(missing)}"
            print(f"demo: {why}: starting the controller only (run as root for the three-node mesh)")
        return _stopped(controller_only, args)
    return _stopped(full_demo, args)


if __name__ == "__main__":
    sys.exit(main())
