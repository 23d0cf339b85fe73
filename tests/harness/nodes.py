"""Helpers for node API tests: an enrollment token through the management API and test nodes
enrolled with the real client (cvlan.devtools.harness.enrol, shared with bench, sim and the demo)."""

from __future__ import annotations

from typing import Any

from cvlan.devtools.harness.enrol import EnrolledNode, register
from cvlan.devtools.harness.enrol import make_token as _make_token
from cvlan.devtools.harness.inprocess import RunningController

__all__ = ["EnrolledNode", "ca_pem", "enrol", "make_token"]


async def make_token(rc: RunningController, tenant: str = "acme", cvlan: str = "office", **kw: Any) -> str:
    """The text of a new enrollment token for tenant/cvlan, both created if missing."""
    return str((await _make_token(rc.api().call, tenant, cvlan, **kw))["token"])


def ca_pem(rc: RunningController) -> str:
    assert rc.c is not None
    return rc.c.ca.cert_pem.decode()


async def enrol(rc: RunningController, token: str, hostname: str = "host") -> EnrolledNode:
    """Register a fresh node (new WireGuard and TLS keys), with a client presenting its certificate."""
    return await register(rc.url, ca_pem(rc), token, hostname)
