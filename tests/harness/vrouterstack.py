"""Vrouters in the namespace lab: created through the management API, started with the command it
prints, and read back through their WireGuard device (real counters) and status file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlan.dataplane.uapi import SOCKET_DIR, UapiClient
from cvlan.devtools.harness.controller import script
from cvlan.devtools.harness.enrol import join_args, make_token_sync
from tests.harness.netns import Lab, Netns, Proc
from tests.harness.stack import Controller, wait_until

VROUTER_PORT = 51900


@dataclass
class RunningVrouter:
    name: str
    region: str
    ns: Netns
    ifname: str
    state_dir: Path
    proc: Proc

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        return data

    def counters(self) -> dict[str, tuple[int, int]]:
        """Peer key (hex) -> (rx_bytes, tx_bytes), straight from the WireGuard device."""
        st = UapiClient(SOCKET_DIR / f"{self.ifname}.sock").get()
        return {str(k): (p.rx_bytes, p.tx_bytes) for k, p in st.peers.items()}

    def denied(self) -> int:
        out = self.ns.exec("nft", "-j", "list", "counter", "inet", f"cvlan-{self.ifname}", "denied")
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        return 0

    def restart(self) -> None:
        """SIGTERM, then start again from the state dir alone (no server, no token)."""
        self.proc.stop()
        (self.state_dir / "status.json").unlink(missing_ok=True)  # wait_served then sees the new run
        argv = [script("cvlan-vrouter"), "--state-dir", str(self.state_dir), "--interface", self.ifname]
        self.proc = self.ns.spawn(f"vrouter-{self.name}", *argv, "--long-poll", "5")

    def wait_served(self, cvlans: int, served: int, peers: int, timeout: float = 60) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            if not self.proc.alive():
                raise RuntimeError(f"cvlan-vrouter {self.name} exited:\n{self.proc.output()[-3000:]}")
            if not (self.state_dir / "status.json").exists():
                return None
            st = self.status()
            good = st["cvlans"] == cvlans and st["served"] == served and len(st["peers"]) == peers
            return st if good else None

        try:
            got: dict[str, Any] = wait_until(f"vrouter {self.name} serves {served} members", ok, timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- cvlan-vrouter log ---\n{self.proc.output()[-3000:]}") from None
        return got


def ensure_region(ctl: Controller, region: str) -> None:
    assert ctl.api is not None
    if all(r["name"] != region for r in ctl.api.get("/api/v1/regions")["items"]):
        ctl.api.post("/api/v1/regions", {"name": region})


def start_vrouter(lab: Lab, ctl: Controller, name: str, region: str) -> RunningVrouter:
    """Register a vrouter on a new public host and start it with the command the API printed."""
    assert ctl.api is not None
    ensure_region(ctl, region)
    ns = lab.public_host(name)
    created = ctl.api.post(
        "/api/v1/vrouters", {"name": name, "region": region, "endpoint": f"{ns.ip}:{VROUTER_PORT}"}
    )
    server, token, pin = join_args(str(created["command"]))
    ifname = lab.wg_ifname()
    state = lab.dir / f"{name}-vrouter"
    argv = [script("cvlan-vrouter"), "--server", server, "--token", token, "--ca-pin", pin]
    argv += ["--state-dir", str(state), "--interface", ifname, "--long-poll", "5"]
    proc = ns.spawn(f"vrouter-{name}", *argv)
    return RunningVrouter(name, region, ns, ifname, state, proc)


def attach(ctl: Controller, tenant: str, cvlan: str, vrouter: str) -> None:
    assert ctl.api is not None
    ctl.api.post(f"/api/v1/tenants/{tenant}/cvlans/{cvlan}/vrouters", {"vrouter": vrouter})


def cvlan_with_token(ctl: Controller, tenant: str, cvlan: str, mode: str, region: str = "") -> str:
    """Create tenant and CVLAN if needed; return the join command of a reusable token whose nodes
    are placed in region (by the region: tag)."""
    assert ctl.api is not None
    placed: dict[str, Any] = {"tags": [f"region:{region}"]} if region else {}
    body = make_token_sync(ctl.api.request, tenant, cvlan, {"mode": mode}, reusable=True, **placed)
    return str(body["join_command"])
