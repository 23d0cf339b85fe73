"""A cvlan-relay process in a Lab namespace, registered with a controller from tests.harness.stack."""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

from cvlan.devtools.harness.controller import script
from tests.harness.netns import Lab, Netns, Proc
from tests.harness.nsconnect import socket_in_netns
from tests.harness.stack import Controller, wait_until

RELAY_PORT = 443
STUN_PORT = 3478


@dataclass
class RelayProc:
    lab: Lab
    ns: Netns
    ctl: Controller
    name: str
    region: str
    command: str = ""
    proc: Proc | None = None
    stun_host: str = ""
    """The STUN host registered in the relay map (default: the namespace's address)."""
    stun_listen: str = ""
    """--stun-listen (default: the namespace's address, port STUN_PORT)."""

    @property
    def url(self) -> str:
        return f"https://{self.ns.ip}:{RELAY_PORT}"

    def create(self) -> RelayProc:
        api = self.ctl.api
        assert api is not None
        if self.region not in [r["name"] for r in api.get("/api/v1/regions")["items"]]:
            api.post("/api/v1/regions", {"name": self.region})
        out = api.post(
            "/api/v1/relays",
            {
                "name": self.name,
                "region": self.region,
                "url": self.url,
                "stun": f"{self.stun_host or self.ns.ip}:{STUN_PORT}",
            },
        )
        self.command = str(out["command"])
        return self

    def start(self, with_token: bool = True) -> RelayProc:
        words = self.command.split()
        val = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        argv = [
            script("cvlan-relay"),
            "--server",
            val["--server"],
            "--listen",
            f"{self.ns.ip}:{RELAY_PORT}",
            "--stun-listen",
            self.stun_listen or f"{self.ns.ip}:{STUN_PORT}",
            "--state-dir",
            str(self.lab.dir / f"{self.name}-state"),
        ]
        if with_token:
            argv += ["--token", val["--token"], "--ca-pin", val["--ca-pin"]]
        self.proc = self.ns.spawn(self.name, *argv)
        wait_until(f"{self.name} listens", lambda: self._listening() or not self._alive(), 30, 0.1)
        if not self._alive():
            raise RuntimeError(f"{self.name} exited:\n{self.proc.output()}")
        return self

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def _listening(self) -> bool:
        return f"{self.ns.ip}:{RELAY_PORT}" in self.ns.exec("ss", "-tln")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def metrics(self) -> dict[str, float]:
        """/metrics read from inside the relay's namespace, as {'name{labels}': value}."""
        out: dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def metrics_text(self) -> str:
        """/metrics as served, read from inside the relay's namespace (trusting the controller CA)."""
        ctx = ssl.create_default_context(cadata=ca_pem_of(self.ctl))
        sock = socket_in_netns(self.ns.name)
        sock.settimeout(10)
        sock.connect((self.ns.ip, RELAY_PORT))
        with ctx.wrap_socket(sock, server_hostname=self.ns.ip) as s:
            s.sendall(f"GET /metrics HTTP/1.0\r\nHost: {self.ns.ip}\r\n\r\n".encode())
            data = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode()

    def forwarded_bytes(self) -> float:
        return self.metrics().get('cvlan_relay_bytes_total{direction="forwarded"}', 0.0)


def start_relay(lab: Lab, ctl: Controller, name: str = "relay1", region: str = "eu") -> RelayProc:
    ns = lab.public_host(name)
    return RelayProc(lab, ns, ctl, name, region).create().start()


def ca_pem_of(ctl: Controller) -> str:
    text = (ctl.data_dir / "admin.conf").read_text()
    m = re.search(r"^ca =\n((?:  .*\n?)+)", text, re.M)
    assert m, "admin.conf has no ca"
    return "\n".join(line[2:] for line in m.group(1).splitlines()) + "\n"


def peer_paths(node: Any) -> dict[str, str]:
    return {p.name: p.path for p in node.status().peers}
