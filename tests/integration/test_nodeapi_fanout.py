"""Two controller processes on one PostgreSQL: a change made through one reaches nodes polling the other."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cvlan.client import tls
from cvlan.client.controller import NodeApiClient
from tests.harness.controller import RunningController
from tests.harness.nodes import ca_pem, enrol, make_token


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_join_and_endpoints_fan_out_between_controllers(db_url: str, tmp_path: Path) -> None:
    one = await RunningController(tmp_path / "data", db_url).start()
    two = await RunningController(tmp_path / "data", db_url).start()  # same CA, same database
    two.admin_token = one.admin_token
    try:
        token = await make_token(one, uses=3)
        a = await enrol(one, token, "alpha")
        held = (await a.client.poll(0)).map_version
        waiting = asyncio.create_task(a.client.poll(held, long_poll_s=30))
        await asyncio.sleep(0.3)
        key_pem, csr = tls.new_key_and_csr()
        anon = NodeApiClient(two.url, ca_pem(two))
        wg = os.urandom(32)
        reg = await anon.register(token, wg, csr, "beta")  # committed by the other process
        await anon.close()
        got = await asyncio.wait_for(waiting, 10)
        assert [p.node_id for p in got.map.peers] == [reg.node_id]
        # Endpoints reported to controller two reach node alpha on controller one.
        b = NodeApiClient(two.url, ca_pem(two), reg.certificate_pem, key_pem)
        waiting = asyncio.create_task(a.client.poll(got.map_version, long_poll_s=30))
        await asyncio.sleep(0.3)
        await b.poll(0, endpoints=["198.51.100.20:51820"])
        got = await asyncio.wait_for(waiting, 10)
        assert list(got.map.peers[0].endpoints) == ["198.51.100.20:51820"]
        await b.close()
        await a.client.close()
    finally:
        await two.stop()
        await one.stop()
