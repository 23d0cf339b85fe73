"""Two controller processes on one PostgreSQL (started here) behind cvlan-front: one is killed while
nodes poll and register, and PostgreSQL restarts under the same load (docs/FRONT.md, "Several
controllers")."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cvlan.client import tls
from cvlan.client.controller import ControlError, NodeApiClient
from cvlan.common import adminconf
from cvlan.devtools.harness.controller import stop_process
from cvlan.devtools.pgcluster import PgCluster
from cvlan.wire.pb import node_pb2 as pb
from tests.harness import proxysocket
from tests.harness.controller import free_port

pytestmark = pytest.mark.timeout(240)
POLLERS = 6
JOINERS = 30
"""Registrations made through the front while a controller dies or PostgreSQL restarts."""
_dbs = itertools.count()


@dataclass
class Duo:
    pg: PgCluster
    db: str
    conf: adminconf.AdminConf
    token: str
    url: str
    """The front's."""
    direct: list[str]
    """Each controller's own TLS listener."""
    procs: list[subprocess.Popen[bytes]]
    """Controller a, controller b, the front."""


@dataclass
class Load:
    """Nodes long-polling through the front and registrations through it, as a fleet does."""

    polled: dict[int, int] = field(default_factory=dict)
    """Answers per polling node."""
    poll_errors: list[str] = field(default_factory=list)
    registered: list[int] = field(default_factory=list)
    register_errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this module's own: one test restarts it."""
    pg = PgCluster(fsync=False).start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
async def duo(cluster: PgCluster, tmp_path: Path) -> AsyncIterator[Duo]:
    db = f"multi{os.getpid()}_{next(_dbs)}"
    env = ("CVLAN_CONTROLLER_DB", cluster.create_db(db))
    data, socks, ports = (
        tmp_path / "ctl",
        [tmp_path / "a.sock", tmp_path / "b.sock"],
        [free_port(), free_port()],
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, name in enumerate("ab"):  # the first alone: it makes the CA, admin.conf and the schema
            procs.append(proxysocket.serve(data, socks[i], env, port=ports[i], log=tmp_path / f"{name}.log"))
            conf = await proxysocket.wait_ready(procs[i], data, socks[i])
            if i == 0:
                token, _ = await proxysocket.enrol(conf, "n0")
        front, port = await proxysocket.front(tmp_path, data, socks)
        procs.append(front)
        direct = [f"https://127.0.0.1:{p}" for p in ports]
        yield Duo(cluster, db, conf, token, f"https://127.0.0.1:{port}", direct, procs)
    finally:
        for p in reversed(procs):
            stop_process(p)


@dataclass
class Node:
    node_id: int
    client: NodeApiClient
    """Through the front."""
    cert_pem: str
    key_pem: str


async def _register(url: str, d: Duo, name: str, key: bytes | None = None) -> Node:
    """Register through `url`; the node, with a client through the front."""
    key_pem, csr = tls.new_key_and_csr()
    anon = NodeApiClient(url, d.conf.ca_pem)
    try:
        reg = await anon.register(d.token, key or os.urandom(32), csr, name)
    finally:
        await anon.close()
    return Node(
        reg.node_id,
        NodeApiClient(d.url, d.conf.ca_pem, reg.certificate_pem, key_pem),
        reg.certificate_pem,
        key_pem,
    )


async def _poll(c: NodeApiClient, version: int, long_poll_s: int = 0) -> pb.PollResponse:
    return await c.poll(version, [], pb.HealthSummary(), "", long_poll_s=long_poll_s)


async def _keep_polling(load: Load, node_id: int, c: NodeApiClient) -> None:
    """Long-poll (2 s waits, so that many cross the trouble) until told to stop."""
    version = 0
    while not load.stop.is_set():
        try:
            version = (await asyncio.wait_for(_poll(c, version, 2), 30)).map_version
        except (ControlError, TimeoutError) as e:
            load.poll_errors.append(str(e))
            await asyncio.sleep(0.2)
            continue
        load.polled[node_id] = load.polled.get(node_id, 0) + 1


async def _keep_registering(load: Load, d: Duo) -> None:
    """JOINERS registrations, each retried with its key as cvlan-ctrl does (for 60 s at most)."""
    for i in range(JOINERS):
        key = os.urandom(32)
        for _ in range(120):
            try:
                n = await _register(d.url, d, f"j{i}", key)
            except ControlError as e:
                load.register_errors.append(str(e))
                await asyncio.sleep(0.5)
                continue
            await n.client.close()
            load.registered.append(n.node_id)
            break
        await asyncio.sleep(0.1)


async def _change_reaches(d: Duo, clients: list[NodeApiClient], via: str, name: str) -> None:
    """A node registered through `via` is in the next map of every one of `clients`."""
    versions = [(await _poll(c, 0)).map_version for c in clients]
    waiting = [asyncio.create_task(_poll(c, v, 50)) for c, v in zip(clients, versions, strict=True)]
    await asyncio.sleep(0.5)  # parked
    joiner = await _register(via, d, name)
    await joiner.client.close()
    for r in await asyncio.wait_for(asyncio.gather(*waiting), 30):
        assert joiner.node_id in {p.node_id for p in r.map.peers}


def _names_in_db(d: Duo) -> list[str]:
    return [r[0] for r in d.pg.query("SELECT name FROM nodes WHERE name LIKE 'j%' ORDER BY name", d.db)]


async def _under_load(d: Duo, trouble: object) -> tuple[Load, list[Node]]:
    nodes = [await _register(d.url, d, f"p{i}") for i in range(POLLERS)]
    load = Load()
    polling = [asyncio.create_task(_keep_polling(load, n.node_id, n.client)) for n in nodes]
    registering = asyncio.create_task(_keep_registering(load, d))
    await asyncio.sleep(2)
    await trouble()  # type: ignore[operator]
    await asyncio.wait_for(registering, 150)
    answered = dict(load.polled)
    await asyncio.sleep(3)  # every node is answered again after the trouble
    load.stop.set()
    await asyncio.gather(*polling)
    assert all(load.polled[n.node_id] > answered.get(n.node_id, 0) for n in nodes), (answered, load.polled)
    return load, nodes


async def test_nodes_keep_polling_and_registering_through_the_other_controller_when_one_is_killed(
    duo: Duo,
) -> None:
    async def kill() -> None:
        duo.procs[0].send_signal(signal.SIGKILL)
        duo.procs[0].wait(10)

    load, nodes = await _under_load(duo, kill)
    try:
        # In flight at the dead controller or parked from its answers: sent again to the other one.
        assert load.poll_errors == [] and load.register_errors == []
        # No registration lost, none made twice: every node that was answered exists once.
        assert len(load.registered) == JOINERS == len(set(load.registered))
        assert _names_in_db(duo) == sorted(f"j{i}" for i in range(JOINERS))
        # A change reaches every node, through the controller left.
        await _change_reaches(duo, [n.client for n in nodes], duo.url, "late")
    finally:
        for n in nodes:
            await n.client.close()


async def test_controllers_recover_by_themselves_when_postgresql_restarts(duo: Duo) -> None:
    async def restart() -> None:
        await asyncio.to_thread(duo.pg.stop_server)
        await asyncio.sleep(2)
        await asyncio.to_thread(duo.pg.start_server)

    load, nodes = await _under_load(duo, restart)
    try:
        # Every registration got through in the end, once; the errors were those of the window.
        assert len(load.registered) == JOINERS == len(set(load.registered))
        assert _names_in_db(duo) == sorted(f"j{i}" for i in range(JOINERS))
        assert len(load.register_errors) < 60, load.register_errors[:5]
        # Each controller hears the other's changes again (its LISTEN connection came back): a node
        # polling controller b directly gets a node registered through controller a.
        b = NodeApiClient(duo.direct[1], duo.conf.ca_pem, nodes[0].cert_pem, nodes[0].key_pem)
        try:
            await _change_reaches(duo, [b], duo.direct[0], "via-a")
        finally:
            await b.close()
    finally:
        for n in nodes:
            await n.client.close()
