"""cvlan-ctrl against a real controller (SQLite and PostgreSQL) and a stand-in cvland socket."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cvlan.agent.daemon import Agent, FatalError, Options
from cvlan.agent.state import StateStore
from cvlan.client import tls
from tests.harness.controller import RunningController, free_port
from tests.harness.fake_cvland import FakeCvland
from tests.harness.nodes import make_token


def pin(rc: RunningController) -> str:
    assert rc.c is not None
    return rc.c.ca.fingerprint


def opts(rc: RunningController, d: Path, token: str | None, **kw: object) -> Options:
    o = Options(
        server=rc.url,
        token=token,
        ca_pin=pin(rc),
        state_dir=d / "state",
        cvland_socket=d / "cvland.sock",
        hostname="laptop",
        long_poll_s=5,
        enrol_timeout_s=5,
        backoff_cap_s=0.5,
    )
    for k, v in kw.items():
        setattr(o, k, v)
    return o


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        r = cond()
        if r if isinstance(r, bool) else await r:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def nodes(rc: RunningController) -> list[dict[str, object]]:
    return list((await rc.api().get("/api/v1/tenants/acme/nodes")).ok()["items"])


async def test_enrol_push_report_and_restart_without_token(
    controller: RunningController, tmp_path: Path
) -> None:
    token = await make_token(controller)
    cvland = await FakeCvland(tmp_path / "cvland.sock", ["192.0.2.7:51820"], "203.0.113.9:40001").start()
    agent = Agent(opts(controller, tmp_path, token))
    async with running(agent):
        await until(lambda: bool(cvland.applied))
        st = cvland.applied[-1]
        assert st.address.endswith("/32") and st.peers == [] and len(st.private_key) == 64
        assert "BEGIN CERTIFICATE" in st.tls_cert_pem
        await until(lambda: _has_endpoints(controller))
    db = tmp_path / "state" / "state.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    (n,) = await nodes(controller)
    assert n["endpoints"] == ["203.0.113.9:40001", "192.0.2.7:51820"] and n["online"] is True
    assert n["cert_not_after"] and n["map_version"]
    first_id = n["id"]
    # Restart without a token: same identity, same node, no second registration.
    again = Agent(opts(controller, tmp_path, None, ca_pin=None, server=None))
    cvland.applied.clear()
    async with running(again):
        await until(lambda: bool(cvland.applied))
    assert cvland.applied[-1].node_id == first_id
    assert [x["id"] for x in await nodes(controller)] == [first_id]
    await cvland.stop()


async def _has_endpoints(rc: RunningController) -> bool:
    ns = await nodes(rc)
    return bool(ns and ns[0]["endpoints"])


async def test_peer_join_pushes_new_state(controller: RunningController, tmp_path: Path) -> None:
    token = await make_token(controller, uses=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ca = await FakeCvland(tmp_path / "a" / "cvland.sock", ["192.0.2.1:51820"]).start()
    cb = await FakeCvland(tmp_path / "b" / "cvland.sock", ["192.0.2.2:51820"]).start()
    a = Agent(opts(controller, tmp_path / "a", token, hostname="a"))
    b = Agent(opts(controller, tmp_path / "b", token, hostname="b"))
    async with running(a):
        await until(lambda: bool(ca.applied))
        async with running(b):
            await until(lambda: any(p.endpoints == ["192.0.2.2:51820"] for s in ca.applied for p in s.peers))
            await until(lambda: any(p.endpoints == ["192.0.2.1:51820"] for s in cb.applied for p in s.peers))
    assert {p.name for p in ca.applied[-1].peers} == {"b"}
    await ca.stop()
    await cb.stop()


async def test_no_cvland_is_reported_then_state_delivered(
    controller: RunningController, tmp_path: Path
) -> None:
    token = await make_token(controller)
    agent = Agent(opts(controller, tmp_path, token))
    async with running(agent):
        await until(lambda: agent.polls >= 1 and agent.pending is not None)
        assert "no cvland is listening" in agent.ipc_error
        cvland = await FakeCvland(tmp_path / "cvland.sock", []).start()
        await until(lambda: bool(cvland.applied))
    await cvland.stop()


async def test_revoked_node_stops_with_clear_error(controller: RunningController, tmp_path: Path) -> None:
    token = await make_token(controller)
    agent = Agent(opts(controller, tmp_path, token))
    async with running(agent) as task:
        await until(lambda: agent.polls >= 1)
        (n,) = await nodes(controller)
        assert (await controller.api().delete(f"/api/v1/tenants/acme/nodes/{n['id']}")).status == 204
        with pytest.raises(FatalError, match="has been deleted; re-enrol"):
            await asyncio.wait_for(task, 15)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_enrolment_errors_are_one_line(controller: RunningController, tmp_path: Path) -> None:
    token = await make_token(controller)
    with pytest.raises(FatalError, match="does not match the pinned"):
        await Agent(opts(controller, tmp_path, token, ca_pin="sha256:" + "00" * 32)).run(asyncio.Event())
    with pytest.raises(FatalError, match="enrolment refused: enrollment token is not valid"):
        await Agent(opts(controller, tmp_path, token[:-4] + "xxxx")).run(asyncio.Event())
    dead = opts(controller, tmp_path, token, server=f"https://127.0.0.1:{free_port()}", enrol_timeout_s=1)
    with pytest.raises(FatalError, match="cannot reach controller"):
        await Agent(dead).run(asyncio.Event())
    with pytest.raises(FatalError, match="--ca-pin is required"):
        await Agent(opts(controller, tmp_path, token, ca_pin=None)).run(asyncio.Event())
    assert await nodes(controller) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cli_bad_token_exits_1_with_one_line(controller: RunningController, tmp_path: Path) -> None:
    await make_token(controller)
    cmd = [
        sys.executable,
        "-m",
        "cvlan.agent",
        "--server",
        controller.url,
        "--token",
        "cvet_abc_def",
        "--ca-pin",
        pin(controller),
        "--state-dir",
        str(tmp_path / "s"),
        "--enrol-timeout",
        "5",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert (
        err.decode().strip().splitlines()[-1]
        == "cvlan-ctrl: enrolment refused: enrollment token is not valid (http 401)"
    )


async def test_controller_restart_keeps_identity_and_address(db_url: str, tmp_path: Path) -> None:
    rc = await RunningController(tmp_path / "data", db_url).start()
    port = rc.port
    try:
        token = await make_token(rc)
        cvland = await FakeCvland(tmp_path / "cvland.sock", ["192.0.2.7:51820"]).start()
        agent = Agent(opts(rc, tmp_path, token, long_poll_s=1))
        async with running(agent):
            await until(lambda: bool(cvland.applied))
            before = cvland.applied[-1]
            await rc.stop()
            await asyncio.sleep(1.5)  # polls fail meanwhile; the agent backs off and retries
            admin = rc.admin_token
            rc = await RunningController(tmp_path / "data", db_url, port=port).start()
            rc.admin_token = admin
            polls = agent.polls
            await until(lambda: agent.polls > polls + 1)
        (n,) = await nodes(rc)
        assert n["id"] == before.node_id and f"{n['address']}/32" == before.address
        await cvland.stop()
    finally:
        await rc.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_agent_renews_its_certificate_at_two_thirds(db_url: str, tmp_path: Path) -> None:
    rc = await RunningController(tmp_path / "data", db_url, node_cert_lifetime_s=6).start()
    try:
        agent = Agent(opts(rc, tmp_path, await make_token(rc), long_poll_s=1))
        async with running(agent):
            await until(lambda: agent.polls >= 1)
            assert agent.ident is not None
            first = agent.ident.cert_pem
            await until(lambda: agent.ident is not None and agent.ident.cert_pem != first, timeout=20)
            polls = agent.polls
            await until(lambda: agent.polls > polls + 1)  # and keeps polling with the new certificate
        saved = StateStore(tmp_path / "state").load()
        assert saved is not None and saved.cert_pem != first
        assert 0 < tls.cert_not_after(saved.cert_pem) - saved.cert_obtained_at <= 7
    finally:
        await rc.stop()
