"""`cvlan-ctrl join` as an operator runs it: a real controller, the real command in a subprocess, and
a stand-in cvland socket (the real data plane is covered by the e2e suite). SQLite only: join does not
touch the controller's store beyond what registration already tests on both backends.

About 20 s in all (the unreachable case waits for its 2 s --timeout)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvlan.agent.daemon import Agent
from cvlan.agent.join import host_address
from cvlan.agent.state import StateStore
from cvlan.dataplane.engine import kernel_has_wireguard
from cvlan.devtools.harness.controller import script
from tests.harness.controller import RunningController, free_port
from tests.harness.fake_cvland import FakeCvland
from tests.harness.nodes import make_token
from tests.integration.test_agent import opts, pin, running

SERVICE_UID = 65534  # stands in for the packaged cvlan-ctrl user: the state dir's owner


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[RunningController]:
    rc = await RunningController(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'cvlan.db'}").start()
    try:
        yield rc
    finally:
        await rc.stop()


@dataclass
class Result:
    status: int
    out: str
    err: str


async def run_join(
    rc: RunningController | None,
    tmp: Path,
    *extra: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    server: str = "",
    ca_pin: str = "",
) -> Result:
    argv = [
        script("cvlan-ctrl"),
        "join",
        "--server",
        server or (rc.url if rc else ""),
        "--ca-pin",
        ca_pin or (pin(rc) if rc else ""),
        "--state-dir",
        str(tmp / "state"),
        "--cvland-socket",
        str(tmp / "cvland.sock"),
        "--service-manager",
        "none",
        "--hostname",
        "laptop",
        *extra,
    ]
    base = {k: v for k, v in os.environ.items() if k != "CVLAN_TOKEN"}
    p = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base, **(env or {})},
    )
    out, err = await asyncio.wait_for(p.communicate(stdin.encode()), 60)
    assert p.returncode is not None
    return Result(p.returncode, out.decode(), err.decode())


async def supervise(rc: RunningController, tmp: Path, join: asyncio.Task[Result], node_id: int = 0) -> Result:
    """What systemd does for a packaged node: once join has written an identity (another one than
    node_id), run cvlan-ctrl from the state dir without a token until join returns."""
    store = StateStore(tmp / "state")
    for _ in range(600):
        ident = store.load() if store.path.exists() else None
        if join.done() or (ident is not None and ident.node_id != node_id):
            break
        await asyncio.sleep(0.05)
    if join.done():
        return join.result()
    async with running(Agent(opts(rc, tmp, None))):
        return await asyncio.wait_for(join, 60)


def no_state(tmp: Path) -> bool:
    return not (tmp / "state" / "state.db").exists()


async def node_names(rc: RunningController) -> list[str]:
    r = await rc.api().get("/api/v1/tenants/acme/nodes")
    return [n["name"] for n in r.ok()["items"]] if r.status == 200 else []


@pytest.mark.parametrize("source", ["file", "stdin", "env"])
async def test_join_writes_the_identity_owned_by_the_service_user_and_waits_until_online(
    ctl: RunningController, tmp_path: Path, source: str
) -> None:
    token = await make_token(ctl)
    (tmp_path / "state").mkdir(mode=0o700)
    os.chown(tmp_path / "state", SERVICE_UID, SERVICE_UID)
    cvland = await FakeCvland(tmp_path / "cvland.sock", ["192.0.2.7:51820"]).start()
    args: dict[str, object] = {
        "file": {"extra": ("--token-file", str(tmp_path / "t"))},
        "stdin": {"extra": ("--token", "-"), "stdin": token + "\n"},
        "env": {"extra": (), "env": {"CVLAN_TOKEN": token}},
    }[source]
    (tmp_path / "t").write_text(token + "\n")
    try:
        job = asyncio.create_task(
            run_join(ctl, tmp_path, *args["extra"], stdin=str(args.get("stdin", "")), env=args.get("env"))  # type: ignore[arg-type]
        )
        r = await supervise(ctl, tmp_path, job)
    finally:
        await cvland.stop()
    ident = StateStore(tmp_path / "state").load()
    assert ident is not None
    assert r.status == 0, r.err
    assert r.err == ""
    assert r.out.strip() == (
        f"joined: node laptop is online in CVLAN office, overlay address {host_address(ident)}"
    )
    st = (tmp_path / "state" / "state.db").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SERVICE_UID, SERVICE_UID, 0o600)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.db"]
    assert cvland.applied and cvland.applied[-1].node_id == ident.node_id
    assert await node_names(ctl) == ["laptop"]


async def test_a_token_on_the_command_line_is_refused_before_anything_happens(
    ctl: RunningController, tmp_path: Path
) -> None:
    token = await make_token(ctl)
    r = await run_join(ctl, tmp_path, "--token", token)
    assert r.status == 2
    assert r.err.strip() == (
        "cvlan-ctrl join: a token on the command line ends up in `ps` and shell history: "
        "use --token-file FILE, --token - (stdin) or the CVLAN_TOKEN environment variable"
    )
    assert not (tmp_path / "state").exists() and await node_names(ctl) == []
    r = await run_join(ctl, tmp_path)
    assert r.status == 2 and r.err.startswith("cvlan-ctrl join: no enrollment token:")
    (tmp_path / "t").write_text("")
    r = await run_join(ctl, tmp_path, "--token-file", str(tmp_path / "t"))
    assert (
        r.status == 2
        and r.err.strip()
        == f"cvlan-ctrl join: token file {tmp_path / 't'} does not hold one enrollment token"
    )
    assert not (tmp_path / "state").exists()


async def test_bad_token_unreachable_controller_and_pin_mismatch_leave_nothing_behind(
    ctl: RunningController, tmp_path: Path
) -> None:
    await make_token(ctl)
    env = {"CVLAN_TOKEN": "cvet_notarealtoken0000000000"}
    r = await run_join(ctl, tmp_path, env=env)
    assert r.status == 1 and r.err.count("\n") == 1, r.err
    assert r.err.startswith("cvlan-ctrl join: enrolment refused:"), r.err
    assert no_state(tmp_path)

    dead = f"https://127.0.0.1:{free_port()}"
    r = await run_join(ctl, tmp_path, "--timeout", "2", env=env, server=dead)
    assert r.status == 1 and r.err.count("\n") == 1, r.err
    assert r.err.strip() == f"cvlan-ctrl join: controller {dead} is unreachable: Connection refused", r.err
    assert no_state(tmp_path)

    wrong = "sha256:" + "00" * 32
    r = await run_join(ctl, tmp_path, env=env, ca_pin=wrong)
    assert r.status == 1 and r.err.count("\n") == 1, r.err
    assert r.err.startswith("cvlan-ctrl join: controller CA sha256:"), r.err
    assert f"does not match the pinned {wrong}; refusing to talk to {ctl.url}" in r.err
    assert no_state(tmp_path)
    assert await node_names(ctl) == []


async def test_join_again_says_already_joined_and_force_joins_with_the_new_token(
    ctl: RunningController, tmp_path: Path
) -> None:
    cvland = await FakeCvland(tmp_path / "cvland.sock", ["192.0.2.7:51820"]).start()
    try:
        first = await make_token(ctl)
        r = await supervise(
            ctl, tmp_path, asyncio.create_task(run_join(ctl, tmp_path, env={"CVLAN_TOKEN": first}))
        )
        assert r.status == 0, r.err
        old = StateStore(tmp_path / "state").load()
        assert old is not None

        second = await make_token(ctl)
        r = await run_join(ctl, tmp_path, env={"CVLAN_TOKEN": second})
        assert r.status == 1
        assert r.err.strip() == (
            f"cvlan-ctrl join: already joined: node laptop ({host_address(old)}) in CVLAN office "
            f"on {ctl.url}; "
            "`cvlancli status` shows it, `join --force` joins again with the new token"
        )
        assert StateStore(tmp_path / "state").load() == old

        # --force with a bad token keeps the old identity: nothing is replaced until enrolment succeeds.
        r = await run_join(ctl, tmp_path, "--force", env={"CVLAN_TOKEN": "cvet_notarealtoken0000000000"})
        assert r.status == 1 and "enrolment refused" in r.err
        assert StateStore(tmp_path / "state").load() == old

        job = asyncio.create_task(run_join(ctl, tmp_path, "--force", env={"CVLAN_TOKEN": second}))
        r = await supervise(ctl, tmp_path, job, node_id=old.node_id)
    finally:
        await cvland.stop()
    assert r.status == 0, r.err
    new = StateStore(tmp_path / "state").load()
    assert new is not None and new.node_id != old.node_id and new.wg_private_key != old.wg_private_key
    assert r.out.strip().endswith(f"overlay address {host_address(new)}")
    assert cvland.applied[-1].node_id == new.node_id


async def test_join_says_why_the_node_did_not_come_online(ctl: RunningController, tmp_path: Path) -> None:
    token = await make_token(ctl)
    r = await run_join(ctl, tmp_path, "--timeout", "1", env={"CVLAN_TOKEN": token})
    ident = StateStore(tmp_path / "state").load()
    assert ident is not None  # enrolled: the identity stays, a supervisor can start the daemons later
    assert r.status == 1
    assert r.err.strip() == (
        f"cvlan-ctrl join: joined as node laptop ({host_address(ident)}) but not online after 1 s: "
        f"no cvland is listening on {tmp_path / 'cvland.sock'}; see `journalctl -u cvland -u cvlan-ctrl`"
    )


async def test_no_wireguard_engine_is_said_before_anything_is_registered(
    ctl: RunningController, tmp_path: Path
) -> None:
    if kernel_has_wireguard():
        pytest.skip("this kernel has WireGuard: there is always an engine")
    token = await make_token(ctl)
    empty = tmp_path / "bin"
    empty.mkdir()
    r = await run_join(ctl, tmp_path, env={"CVLAN_TOKEN": token, "PATH": str(empty)})
    assert r.status == 1
    assert r.err.strip() == (
        "cvlan-ctrl join: no WireGuard engine: install wireguard-go (apt-get install wireguard-go) "
        "or load the wireguard kernel module"
    )
    assert no_state(tmp_path) and await node_names(ctl) == []


async def test_under_systemd_join_enables_and_starts_both_services(
    ctl: RunningController, tmp_path: Path
) -> None:
    """systemd is not running here: a stand-in systemctl records what join asks of it."""
    token = await make_token(ctl)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wg = shutil.which("wireguard-go")
    assert wg is not None
    (bin_dir / "wireguard-go").symlink_to(wg)
    calls = tmp_path / "systemctl.calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    cvland = await FakeCvland(tmp_path / "cvland.sock", ["192.0.2.7:51820"]).start()
    env = {"CVLAN_TOKEN": token, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    try:
        job = asyncio.create_task(run_join(ctl, tmp_path, "--service-manager", "systemd", env=env))
        r = await supervise(ctl, tmp_path, job)
    finally:
        await cvland.stop()
    assert r.status == 0, r.err
    assert calls.read_text().splitlines() == ["enable --now cvland cvlan-ctrl"]


async def test_a_state_dir_join_cannot_write_is_said_before_anything_is_registered(
    ctl: RunningController, tmp_path: Path
) -> None:
    token = await make_token(ctl)
    os.chmod(tmp_path, 0o755)
    user = {"CVLAN_TOKEN": token}
    argv = ["setpriv", "--reuid", str(SERVICE_UID), "--regid", str(SERVICE_UID), "--clear-groups"]
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    p = await asyncio.create_subprocess_exec(
        *argv,
        script("cvlan-ctrl"),
        "join",
        "--server",
        ctl.url,
        "--ca-pin",
        pin(ctl),
        "--state-dir",
        str(locked / "state"),
        "--service-manager",
        "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if k != "CVLAN_TOKEN"}, **user},
    )
    _, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 1, err
    assert err.decode().strip() == (
        f"cvlan-ctrl join: cannot write to {locked / 'state'}: permission denied (run join as root)"
    )
    assert await node_names(ctl) == []
