"""Network-namespace topologies for end-to-end tests: hosts, an "internet" router, NAT routers.

Every name carries a per-run tag (`cvlt<pid hex><random>`), so concurrent runs never collide, and
all traffic stays inside the namespaces created here (addresses from the documentation ranges
192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 for the fake internet, 10.200.0.0/16 behind NATs).

Cleanup is guaranteed three ways: `Lab.close()` (called by the pytest fixture finalizer), an
atexit hook, and a sweep at the next start that removes namespaces of runs whose process is gone.
Processes are stopped by the PIDs we started, then any process still inside one of our namespaces
(`ip netns pids`) is killed before the namespace is deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cvlan.common.host import pid_alive

PREFIX = "cvlt"
_TAG_RE = re.compile(rf"^{PREFIX}([0-9a-f]+)x[0-9a-f]+-")


def sh(*argv: str, check: bool = True, timeout: float = 30, input: str | None = None) -> str:
    """Run a command, return stdout; raise with its stderr on failure."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc={r.returncode}: {r.stderr.strip()}")
    return r.stdout


def sweep_stale() -> list[str]:
    """Delete namespaces left by earlier runs whose test process no longer exists."""
    removed = []
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _TAG_RE.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            _kill_ns_pids(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    for link in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        m = _TAG_RE.match(f"{link.name}-")
        if m and link.is_symlink() and not pid_alive(int(m.group(1), 16)):
            link.unlink(missing_ok=True)
    return removed


def _kill_ns_pids(ns: str) -> None:
    for _ in range(3):
        pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


@dataclass
class Proc:
    """A process started in a namespace, with its log file."""

    name: str
    ns: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        """Signal the process, wait up to grace seconds, then SIGKILL. Returns its exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        return self.popen.returncode

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Netns:
    """One network namespace of a Lab."""

    lab: Lab
    name: str
    short: str
    addrs: list[str] = field(default_factory=list)

    def exec(self, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout, input=input)

    def run(self, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )

    def spawn(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Proc:
        return self.lab.spawn(self, name, list(argv), env)

    def ping(self, ip: str, count: int = 1, wait: float = 1.0) -> bool:
        r = self.run("ping", "-n", "-q", "-c", str(count), "-W", str(wait), ip, timeout=count * wait + 10)
        return r.returncode == 0

    def wait_ping(self, ip: str, timeout: float = 30.0) -> bool:
        """Ping once a second until one answer arrives or timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(ip):
                return True
        return False

    @property
    def ip(self) -> str:
        """The first address given to this namespace."""
        return self.addrs[0].split("/")[0]


class Lab:
    """A set of namespaces and processes belonging to one test run."""

    def __init__(self, base_dir: Path | None = None) -> None:
        sweep_stale()
        self.tag = f"{PREFIX}{os.getpid():x}x{secrets.token_hex(2)}"
        self.real_dir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir=base_dir))
        # Unix sockets live in the run's directory, and a socket path has at most 107 bytes: a test's
        # temporary directory (deeper still under pytest workers) leaves too few. The lab's files
        # stay there; the lab reaches them through a short link in the temporary directory.
        self._link = Path(tempfile.gettempdir()) / self.tag
        self._link.symlink_to(self.real_dir, target_is_directory=True)
        self.dir = self._link
        self.namespaces: list[Netns] = []
        self.procs: list[Proc] = []
        self._wg_ids = itertools.count()
        self._p2p = itertools.count(1)
        self._lans = itertools.count(1)
        self.inet: Netns | None = None
        self._closed = False
        atexit.register(self.close)

    # --- building blocks -------------------------------------------------------------------------

    def ns(self, short: str) -> Netns:
        name = f"{self.tag}-{short}"
        sh("ip", "netns", "add", name)
        n = Netns(self, name, short)
        self.namespaces.append(n)
        n.exec("ip", "link", "set", "lo", "up")
        return n

    def wg_ifname(self) -> str:
        """A WireGuard interface name unique on this host (the UAPI socket directory is shared)."""
        return f"wg{self.tag[len(PREFIX) :].replace('x', '')[-9:]}{next(self._wg_ids)}"[:15]

    def veth(self, a: Netns, a_if: str, a_addr: str, b: Netns, b_if: str, b_addr: str) -> None:
        """A veth pair from a (a_if, a_addr) to b (b_if, b_addr), both up."""
        sh("ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name)
        for n, ifn, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            if addr:
                n.exec("ip", "addr", "add", addr, "dev", ifn)
                n.addrs.append(addr)
            n.exec("ip", "link", "set", ifn, "up")

    def spawn(self, ns: Netns, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{ns.short}-{name}.log"
        out = open(log, "ab")  # noqa: SIM115 - the child keeps the descriptor
        try:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        finally:
            out.close()
        proc = Proc(name, ns.name, p, log)
        self.procs.append(proc)
        return proc

    # --- topologies ------------------------------------------------------------------------------

    def internet(self) -> Netns:
        """The router namespace standing in for the internet (created once)."""
        if self.inet is None:
            self.inet = self.ns("inet")
            self.inet.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        return self.inet

    def public_host(self, short: str) -> Netns:
        """A host with a public address on a /30 link to the internet router (192.0.2.0/24)."""
        inet = self.internet()
        i = next(self._p2p)
        if i > 63:
            raise RuntimeError("public_host: out of /30 links in 192.0.2.0/24")
        h = self.ns(short)
        r_ip, h_ip = f"192.0.2.{4 * i + 1}", f"192.0.2.{4 * i + 2}"
        self.veth(inet, f"p{i}", f"{r_ip}/30", h, "eth0", f"{h_ip}/30")
        h.exec("ip", "route", "add", "default", "via", r_ip)
        return h

    def nat_host(self, short: str, nat: str = "masquerade", home_fw: bool = True) -> tuple[Netns, Netns]:
        """A host on a private LAN behind its own NAT router; returns (host, router).

        nat is the nftables statement: "masquerade" (port-preserving, endpoint-independent) or
        "masquerade random" (endpoint-dependent, "symmetric"). home_fw adds the input/forward drop
        of unsolicited inbound connections that real home routers have."""
        inet = self.internet()
        i = next(self._lans)
        if i > 63:
            raise RuntimeError("nat_host: out of /30 links in 198.51.100.0/24")
        router, host = self.ns(f"{short}-nat"), self.ns(short)
        r_ip, w_ip = f"198.51.100.{4 * i + 1}", f"198.51.100.{4 * i + 2}"
        self.veth(inet, f"n{i}", f"{r_ip}/30", router, "wan0", f"{w_ip}/30")
        router.exec("ip", "route", "add", "default", "via", r_ip)
        self.veth(router, "lan0", f"10.200.{i}.1/24", host, "eth0", f"10.200.{i}.2/24")
        host.exec("ip", "route", "add", "default", "via", f"10.200.{i}.1")
        router.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        fw = (
            "  chain input { type filter hook input priority filter; policy accept;\n"
            '    iifname "wan0" ct state new counter drop\n  }\n'
            "  chain forward { type filter hook forward priority filter; policy accept;\n"
            '    iifname "wan0" ct state new counter drop\n  }\n'
            if home_fw
            else ""
        )
        router.exec(
            "nft",
            "-f",
            "-",
            input=(
                "table ip cvlnat {\n"
                "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
                f'    oifname "wan0" {nat}\n  }}\n'
                f"{fw}}}\n"
            ),
        )
        return host, router

    def lan_pair(self) -> tuple[Netns, Netns]:
        """Two hosts on one veth link (10.201.0.1/24 and 10.201.0.2/24): the simplest topology."""
        a, b = self.ns("a"), self.ns("b")
        self.veth(a, "eth0", "10.201.0.1/24", b, "eth0", "10.201.0.2/24")
        return a, b

    # --- cleanup ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in reversed(self.procs):
            p.stop(grace=5.0)
        for n in reversed(self.namespaces):
            _kill_ns_pids(n.name)
            sh("ip", "netns", "del", n.name, check=False)
        self._link.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
