"""The node API end to end over real TLS on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from cvlan.client.controller import ControlError
from tests.harness.controller import RunningController
from tests.harness.nodes import enrol, make_token


async def test_register_then_poll_full_then_unchanged(controller: RunningController) -> None:
    token = await make_token(controller, uses=5)
    a = await enrol(controller, token, "alpha")
    assert a.reg.address.endswith("/32") and a.reg.cvlan_name == "office"
    assert "BEGIN CERTIFICATE" in a.reg.certificate_pem
    r1 = await a.client.poll(0, endpoints=["192.0.2.10:51820"])
    assert not r1.unchanged and r1.map.self.node_id == a.node_id and list(r1.map.peers) == []
    r2 = await a.client.poll(r1.map_version)
    assert r2.unchanged and r2.map_version == r1.map_version and not r2.HasField("map")
    await a.client.close()


async def test_new_peer_reaches_long_polling_node(controller: RunningController) -> None:
    token = await make_token(controller, uses=5)
    a = await enrol(controller, token, "alpha")
    first = await a.client.poll(0)
    held = first.map_version
    waiting = asyncio.create_task(a.client.poll(held, long_poll_s=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    b = await enrol(controller, token, "beta")
    joined_at = loop.time()
    got = await asyncio.wait_for(waiting, 10)
    delay = loop.time() - joined_at
    assert not got.unchanged
    assert [p.node_id for p in got.map.peers] == [b.node_id]
    assert got.map.peers[0].wg_public_key == b.wg_key
    assert delay < 1.0, f"change reached the long-polling node after {delay:.2f}s"
    await a.client.close()
    await b.client.close()


async def test_deleted_node_is_refused(controller: RunningController) -> None:
    token = await make_token(controller)
    a = await enrol(controller, token, "alpha")
    await a.client.poll(0)
    (await controller.api().delete(f"/api/v1/tenants/acme/nodes/{a.node_id}"))
    with pytest.raises(ControlError) as ei:
        await a.client.poll(0)
    assert ei.value.status == 401 and ei.value.reason == "revoked" and not ei.value.retryable
    await a.client.close()
