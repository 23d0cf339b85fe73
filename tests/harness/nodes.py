"""Helpers for node API tests: provision a tenant/CVLAN/token and enrol test nodes with the real client."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cvlan.client import tls
from cvlan.client.controller import NodeApiClient
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController


@dataclass
class EnrolledNode:
    wg_key: bytes
    key_pem: str
    reg: pb.RegisterResponse
    client: NodeApiClient

    @property
    def node_id(self) -> int:
        return self.reg.node_id


async def make_token(rc: RunningController, tenant: str = "acme", cvlan: str = "office", **kw: object) -> str:
    api = rc.api()
    if (await api.get(f"/api/v1/tenants/{tenant}")).status == 404:
        (await api.post("/api/v1/tenants", {"name": tenant})).ok()
    if (await api.get(f"/api/v1/tenants/{tenant}/cvlans/{cvlan}")).status == 404:
        (await api.post(f"/api/v1/tenants/{tenant}/cvlans", {"name": cvlan})).ok()
    body = {"cvlan": cvlan, **kw}
    return str((await api.post(f"/api/v1/tenants/{tenant}/tokens", body)).ok()["token"])


def ca_pem(rc: RunningController) -> str:
    assert rc.c is not None
    return rc.c.ca.cert_pem.decode()


async def enrol(rc: RunningController, token: str, hostname: str = "host") -> EnrolledNode:
    """Register a fresh node (new WireGuard and TLS keys) and return a client using its certificate."""
    wg = os.urandom(32)
    key_pem, csr = tls.new_key_and_csr()
    anon = NodeApiClient(rc.url, ca_pem(rc))
    try:
        reg = await anon.register(token, wg, csr, hostname)
    finally:
        await anon.close()
    return EnrolledNode(wg, key_pem, reg, NodeApiClient(rc.url, ca_pem(rc), reg.certificate_pem, key_pem))
