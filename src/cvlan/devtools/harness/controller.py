"""Starting `cvlan-controller serve` as a process: its command line, the wait until it is ready, and a
loopback instance stopped by its pid. The namespace stack, the benchmarks, cvlan-sim and the demo start
the controller with these; the tests' in-process controller is in `inprocess`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from cvlan.common import adminconf

__all__ = [
    "ControllerNotReady",
    "ControllerProcess",
    "free_port",
    "healthy",
    "on_a_free_port",
    "inherited_env",
    "ready_step",
    "script",
    "serve_argv",
    "stop_process",
    "wait_ready",
    "wait_ready_async",
]

T = TypeVar("T")

READY_TIMEOUT_S = 90.0
"""How long a controller may take to write admin.conf and answer (a loaded 2-core machine, PostgreSQL)."""


class ControllerNotReady(RuntimeError):
    """The controller exited, or did not answer within the time allowed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT_TAKEN = "address already in use"
"""What a start that lost its port to another process says (the server's own message, lowercased)."""


async def on_a_free_port(start: Callable[[int], Awaitable[T]], tries: int = 5) -> tuple[T, int]:
    """start(port) on a port that was free a moment ago, and the port. Another process on the machine
    may bind it first; a start that fails saying so (PORT_TAKEN in its error) is tried again on another
    port, `tries` times at most. Any other failure is raised at once."""
    for attempt in range(tries):
        port = free_port()
        try:
            return await start(port), port
        except Exception as e:
            if PORT_TAKEN not in str(e).lower() or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def script(name: str) -> str:
    """One of CVLAN's commands: beside the running interpreter (a virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"command {name} is not installed (pip install -e .)")
    return found


def serve_argv(
    data_dir: Path,
    listen: str,
    *,
    db: str = "",
    proxy_socket: Path | None = None,
    metrics_listen: str | None = None,
    tls: bool = True,
    log_level: str = "",
    extra: tuple[str, ...] = (),
    program: tuple[str, ...] = (),
) -> list[str]:
    """The `cvlan-controller serve` command line. metrics_listen None keeps the default listener,
    "" turns it off; program: what runs the controller (default: the cvlan-controller command)."""
    argv = [*(program or (script("cvlan-controller"),)), "serve", "--data-dir", str(data_dir)]
    argv += ["--listen", listen]
    if db:
        argv += ["--db", db]
    if proxy_socket is not None:
        argv += ["--proxy-socket", str(proxy_socket)]
    if metrics_listen is not None:
        argv += ["--metrics-listen", metrics_listen]
    if not tls:
        argv.append("--no-tls")
    if log_level:
        argv += ["--log-level", log_level]
    return argv + list(extra)


def healthy(conf: adminconf.AdminConf, timeout: float = 2.0) -> bool:
    """Whether the controller named in admin.conf answers GET /healthz with 200."""
    try:
        with urllib.request.urlopen(
            conf.server + "/healthz", timeout=timeout, context=conf.ssl_context()
        ) as r:
            return int(r.status) == 200
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
        return False


def ready_step(
    data_dir: Path,
    alive: Callable[[], bool],
    describe: Callable[[], str],
    *,
    also: tuple[Path, ...] = (),
    check: Callable[[adminconf.AdminConf], bool] | None = healthy,
) -> adminconf.AdminConf | None:
    """One look at a starting controller: its admin configuration once admin.conf and the `also`
    paths exist and `check` passes (None: no check), None while it is still starting. Raises
    ControllerNotReady if it exited."""
    if not alive():
        raise ControllerNotReady(f"the controller exited: {describe()}")
    conf_path = data_dir / "admin.conf"
    if not conf_path.exists() or not all(p.exists() for p in also):
        return None
    conf = adminconf.load(conf_path)
    return conf if check is None or check(conf) else None


def wait_ready(
    step: Callable[[], adminconf.AdminConf | None], timeout: float = READY_TIMEOUT_S, interval: float = 0.2
) -> adminconf.AdminConf:
    """Repeat a ready_step (bound with functools.partial or a lambda) until it gives the configuration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conf = step()
        if conf is not None:
            return conf
        time.sleep(interval)
    raise ControllerNotReady(f"the controller was not ready within {timeout:.0f} s")


async def wait_ready_async(
    step: Callable[[], adminconf.AdminConf | None], timeout: float = READY_TIMEOUT_S, interval: float = 0.2
) -> adminconf.AdminConf:
    """wait_ready for an event loop: each look runs in a thread (the health check blocks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conf = await asyncio.to_thread(step)
        if conf is not None:
            return conf
        await asyncio.sleep(interval)
    raise ControllerNotReady(f"the controller was not ready within {timeout:.0f} s")


@dataclass
class ControllerProcess:
    """`cvlan-controller serve` as a child process of this one, stopped by its pid."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path | None = None
    conf: adminconf.AdminConf | None = None

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        log: IO[bytes] | None = None,
        log_path: Path | None = None,
        new_session: bool = False,
    ) -> ControllerProcess:
        """Start argv (serve_argv's, possibly behind a prefix such as taskset). log: where its output
        goes (None: this process's own); env: the whole environment (None: this process's)."""
        err = subprocess.STDOUT if log is not None else None
        proc = subprocess.Popen(argv, stdout=log, stderr=err, env=env, start_new_session=new_session)
        return cls(proc, data_dir, log_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe(self) -> str:
        """The exit status and, when the output went to a file, its last line."""
        tail = ""
        if self.log_path is not None and self.log_path.exists():
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            tail = ": " + (lines[-1] if lines else "(no output)")
        return f"status {self.proc.returncode}{tail}"

    def step(
        self,
        also: tuple[Path, ...] = (),
        check: Callable[[adminconf.AdminConf], bool] | None = healthy,
    ) -> adminconf.AdminConf | None:
        return ready_step(self.data_dir, self.alive, self.describe, also=also, check=check)

    def wait(
        self,
        timeout: float = READY_TIMEOUT_S,
        also: tuple[Path, ...] = (),
        check: Callable[[adminconf.AdminConf], bool] | None = healthy,
    ) -> adminconf.AdminConf:
        """Block until ready (admin.conf, the `also` paths, the check); stop it if it never is."""
        try:
            self.conf = wait_ready(lambda: self.step(also, check), timeout)
        except ControllerNotReady:
            self.stop()
            raise
        return self.conf

    async def wait_async(
        self,
        timeout: float = READY_TIMEOUT_S,
        also: tuple[Path, ...] = (),
        check: Callable[[adminconf.AdminConf], bool] | None = healthy,
        interval: float = 0.2,
    ) -> adminconf.AdminConf:
        try:
            self.conf = await wait_ready_async(lambda: self.step(also, check), timeout, interval)
        except ControllerNotReady:
            self.stop()
            raise
        return self.conf

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        stop_process(self.proc, grace)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Stop a child process this one started: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def inherited_env(**overrides: str) -> dict[str, str]:
    """This process's environment without CVLAN_* settings (which would change the controller's),
    plus overrides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")} | overrides
