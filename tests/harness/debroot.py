"""A clean Debian root for package tests, booted with systemd in a container.

The root is made once per machine by mmdebstrap (minbase plus the packages' dependencies, from the
host's apt sources) and kept as a tarball under CACHE_DIR; each test unpacks a fresh copy (a few
seconds) and boots it with systemd-nspawn in its own network namespace (loopback only unless a lab
namespace is given). Commands run inside through nsenter into the container's namespaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CACHE_DIR = Path(os.environ.get("CVLAN_PKGTEST_CACHE", "/var/cache/cvlan-pkgtest"))
SUITE = "bookworm"
# Everything the packages depend on, preinstalled, so that `dpkg -i` needs no network; plus systemd
# (booted, and for systemd-analyze verify) and ping.
INCLUDE = (
    "python3",
    "nftables",
    "iproute2",
    "wireguard-go",
    "adduser",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iputils-ping",
    "procps",
)
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
BOOT_TIMEOUT_S = 90.0


def base_tarball() -> Path:
    """The cached root tarball, made by mmdebstrap on first use (about 150 s, then cached)."""
    key = hashlib.sha256(" ".join((SUITE, "minbase", *INCLUDE)).encode()).hexdigest()[:12]
    tar = CACHE_DIR / f"{SUITE}-minbase-{key}.tar"
    if tar.exists():
        return tar
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    part = tar.with_suffix(".partial.tar")  # mmdebstrap picks the output format from the extension
    mirror = [str(HOST_SOURCES)] if HOST_SOURCES.exists() else []
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            SUITE,
            str(part),
            *mirror,
        ],
        check=True,
        timeout=900,
    )
    part.rename(tar)
    return tar


def unpack(dest: Path) -> Path:
    """A fresh root at dest from the cached tarball."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(base_tarball())], check=True, timeout=300)
    return dest


def overlay(base: Path, work: Path) -> Path:
    """A copy-on-write root over base (an unpacked root) in work/merged; undo with remove_overlay."""
    for d in ("upper", "work", "merged"):
        (work / d).mkdir(parents=True)
    opts = f"lowerdir={base},upperdir={work / 'upper'},workdir={work / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(work / "merged")], check=True)
    return work / "merged"


def remove_overlay(merged: Path) -> None:
    subprocess.run(["umount", "-l", str(merged)], check=False)
    shutil.rmtree(merged.parent, ignore_errors=True)


class Booted:
    """systemd booted in `root` by systemd-nspawn; run() executes a command inside it. Constructing
    one starts the container; wait_booted() waits for its systemd."""

    def __init__(self, root: Path, name: str, binds: dict[Path, str], netns: str | None = None) -> None:
        self.root = root
        # --private-network grants the container CAP_NET_ADMIN; a given namespace does not by itself
        # (without it wireguard-go cannot create its TUN device).
        net = ["--private-network"]
        if netns:
            net = [f"--network-namespace-path=/run/netns/{netns}", "--capability=CAP_NET_ADMIN"]
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--machine={name}",
            f"--hostname={name}",
            f"--directory={root}",
            "--bind=/dev/net/tun",
            *[f"--bind-ro={src}:{dst}" for src, dst in binds.items()],
            *net,
        ]
        self._log = open(root.parent / f"{name}.console.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.leader = 0

    def wait_booted(self) -> Booted:
        """Wait until the container's systemd is up (several containers boot at once if each is
        started first and waited for afterwards)."""
        self.leader = self._wait_leader()
        self._wait_running()
        return self

    def _wait_leader(self) -> int:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}; see {self._log.name}")
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for k in kids:
                if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                    return int(k)
            time.sleep(0.2)
        raise TimeoutError("container's systemd did not start")

    def _wait_running(self) -> None:
        # "degraded" is fine: a minimal root has units that fail in a container (e.g. no udev).
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not Path(f"/proc/{self.leader}/root/run/systemd/private").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"container's systemd did not come up; see {self._log.name}")
            time.sleep(0.2)
        r = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT_S)
        if r.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"container did not boot: {r.stdout.strip()} {r.stderr.strip()}")

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (all its namespaces, its root) as root."""
        cmd = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd", "--", *argv]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
        if check and r.returncode != 0:
            out = f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}\n{out}")
        return r

    def sh(self, script: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, check=check, timeout=timeout)

    def close(self) -> None:
        """Power the container off (nspawn asks its systemd to on SIGTERM); kill it if that hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # The container's PID 1: killing it ends everything in the container's PID namespace.
                with contextlib.suppress(ProcessLookupError):
                    if self.leader:
                        os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
