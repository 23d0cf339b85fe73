"""A `cvlan-controller serve --proxy-socket` process for tests, and one enrolled node to speak for
(started and enrolled with cvlan.devtools.harness)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cvlan.common import adminconf
from cvlan.devtools.harness.controller import (
    free_port,
    inherited_env,
    ready_step,
    serve_argv,
    wait_ready_async,
)
from cvlan.devtools.harness.enrol import EnrolledNode, make_token
from cvlan.devtools.harness.enrol import register as _register
from cvlan.devtools.harness.inprocess import Api


def serve(
    data: Path, sock: Path, *extra_env: tuple[str, str], port: int = 0, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    """Start the controller with its proxy socket, a TLS listener on `port` and the metrics listener
    on `metrics_port` (any free ones if 0); its output is piped to the caller."""
    argv = serve_argv(
        data,
        f"127.0.0.1:{port or free_port()}",
        proxy_socket=sock,
        metrics_listen=f"127.0.0.1:{metrics_port or free_port()}",
    )
    env = inherited_env(**dict(extra_env))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


async def wait_ready(proc: subprocess.Popen[bytes], data: Path, sock: Path) -> adminconf.AdminConf:
    """Wait (30 s at most) for the first start's admin.conf and the socket; the admin configuration."""

    def exited() -> str:
        return proc.communicate()[0].decode()[-2000:]

    def step() -> adminconf.AdminConf | None:
        return ready_step(data, lambda: proc.poll() is None, exited, also=(sock,), check=None)

    return await wait_ready_async(step, timeout=30, interval=0.1)


async def enrol(conf: adminconf.AdminConf, hostname: str) -> tuple[str, EnrolledNode]:
    """Tenant acme, CVLAN lan, a reusable token, and one node registered with it."""
    api = Api(conf.server, conf.token, conf.ssl_context())
    try:
        token = str((await make_token(api.call, "acme", "lan", reusable=True))["token"])
    finally:
        await api.close()
    return token, await register(conf, token, hostname)


async def register(conf: adminconf.AdminConf, token: str, hostname: str) -> EnrolledNode:
    return await _register(conf.server, conf.ca_pem, token, hostname)
