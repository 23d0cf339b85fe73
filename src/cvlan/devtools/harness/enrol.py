"""Enrolling nodes: an enrollment token made through the management API, a node registered with it
through the node API (the real client, fresh keys), and the command lines of cvland and cvlan-ctrl
joining with a join command. The tests, the benchmarks and the demo enrol nodes with these."""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.client import tls
from cvlan.client.controller import NodeApiClient
from cvlan.client.relay import node_ssl
from cvlan.controller.db.models import Node
from cvlan.controller.ops import cvlans, nodes
from cvlan.controller.ops.context import OpsContext
from cvlan.devtools.harness.controller import script
from cvlan.wire.pb import node_pb2 as pb

__all__ = [
    "ApiCallError",
    "EnrolledNode",
    "create_node",
    "cvland_argv",
    "ctrl_argv",
    "join_args",
    "make_token",
    "make_token_sync",
    "register",
    "token_requests",
]

Request = tuple[str, str, dict[str, Any] | None]
"""(method, path, JSON body) of one management API request."""
Answer = tuple[int, Any]
"""(HTTP status, decoded JSON body)."""


class ApiCallError(RuntimeError):
    """The management API refused a request the enrolment needs."""


def token_requests(
    tenant: str, cvlan: str, cvlan_fields: dict[str, Any] | None = None, **token: object
) -> Generator[Request, Answer, dict[str, Any]]:
    """The requests that make an enrollment token for tenant/cvlan, creating either if it is missing
    (the CVLAN with cvlan_fields, e.g. its mode); token: the token's fields (reusable, uses, tags ...).

    A generator of requests that is sent each answer; it returns the token's JSON (`token`,
    `join_command`, ...). make_token and make_token_sync drive it with an async or a blocking client."""
    base = f"/api/v1/tenants/{tenant}"
    for path, create, body in (
        (base, "/api/v1/tenants", {"name": tenant}),
        (f"{base}/cvlans/{cvlan}", f"{base}/cvlans", {"name": cvlan, **(cvlan_fields or {})}),
    ):
        status, _ = yield ("GET", path, None)
        if status == 404:
            _expect_ok((yield ("POST", create, body)), create)
    answer = yield ("POST", f"{base}/tokens", {"cvlan": cvlan, **token})
    body = _expect_ok(answer, f"{base}/tokens")
    assert isinstance(body, dict)
    return body


def _expect_ok(answer: Answer, path: str) -> Any:
    status, body = answer
    if not 200 <= status < 300:
        raise ApiCallError(f"POST {path}: {status} {body}")
    return body


def _answer(plan: Generator[Request, Answer, dict[str, Any]], answer: Answer) -> Request | dict[str, Any]:
    """Send the plan of token_requests an answer: its next request, or the token's JSON at the end."""
    try:
        return plan.send(answer)
    except StopIteration as done:
        result: dict[str, Any] = done.value
        return result


async def make_token(
    call: Callable[[str, str, dict[str, Any] | None], Awaitable[Answer]],
    tenant: str = "acme",
    cvlan: str = "office",
    cvlan_fields: dict[str, Any] | None = None,
    **token: object,
) -> dict[str, Any]:
    """token_requests through an async call(method, path, body) -> (status, body)."""
    plan = token_requests(tenant, cvlan, cvlan_fields, **token)
    step: Request | dict[str, Any] = next(plan)
    while isinstance(step, tuple):
        step = _answer(plan, await call(*step))
    return step


def make_token_sync(
    call: Callable[[str, str, dict[str, Any] | None], Answer],
    tenant: str = "acme",
    cvlan: str = "office",
    cvlan_fields: dict[str, Any] | None = None,
    **token: object,
) -> dict[str, Any]:
    """token_requests through a blocking call(method, path, body) -> (status, body)."""
    plan = token_requests(tenant, cvlan, cvlan_fields, **token)
    step: Request | dict[str, Any] = next(plan)
    while isinstance(step, tuple):
        step = _answer(plan, call(*step))
    return step


@dataclass
class EnrolledNode:
    """A node registered through the node API: its keys, the controller's answer (and the ids and
    certificates read from it) and a client that presents its certificate."""

    wg_private: bytes
    key_pem: str
    reg: pb.RegisterResponse
    client: NodeApiClient
    node_id: int = field(init=False)
    tenant_id: int = field(init=False)
    cvlan_id: int = field(init=False)
    cert_pem: str = field(init=False)
    ca_pem: str = field(init=False)

    def __post_init__(self) -> None:
        r = self.reg
        self.node_id, self.tenant_id, self.cvlan_id = r.node_id, r.tenant_id, r.cvlan_id
        self.cert_pem, self.ca_pem = r.certificate_pem, r.ca_pem

    @property
    def wg_key(self) -> bytes:
        """The node's WireGuard public key."""
        return x25519.X25519PrivateKey.from_private_bytes(self.wg_private).public_key().public_bytes_raw()

    def ssl(self) -> ssl.SSLContext:
        """Client TLS towards a relay: the controller CA, this node's certificate."""
        return node_ssl(self.cert_pem, self.key_pem, self.ca_pem)


async def register(server: str, ca_pem: str, token: str, hostname: str = "host") -> EnrolledNode:
    """Register a fresh node (new WireGuard and TLS keys) with an enrollment token."""
    wg = x25519.X25519PrivateKey.generate()
    key_pem, csr = tls.new_key_and_csr()
    anon = NodeApiClient(server, ca_pem)
    try:
        reg = await anon.register(token, wg.public_key().public_bytes_raw(), csr, hostname)
    finally:
        await anon.close()
    client = NodeApiClient(server, ca_pem, reg.certificate_pem, key_pem)
    return EnrolledNode(wg.private_bytes_raw(), key_pem, reg, client)


async def create_node(ctx: OpsContext, s: AsyncSession, token: str, hostname: str, os_info: str = "") -> Node:
    """A node made the way registration makes it (the token consumed, an address allocated) in the
    controller's own domain layer, inside the caller's transaction: no keys, no certificate. For tests
    of the management side that need nodes but no node API."""
    tok = await cvlans.consume_token(ctx, s, token)
    return await nodes.create(ctx, s, tok, os.urandom(32), hostname, os_info)


def join_args(join_command: str) -> tuple[str, str, str]:
    """(server, token, ca_pin) from the join command `cvlan token create` prints."""
    words = join_command.split()
    val = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    return val["--server"], val["--token"], val["--ca-pin"]


def cvland_argv(socket: Path, ifname: str, state_dir: Path, *extra: str, dns_mode: str = "off") -> list[str]:
    """cvland's command line. DNS is off unless asked for: a lab namespace without
    /etc/netns/<ns>/resolv.conf shares the host's /etc/resolv.conf, which the lab must not touch."""
    return [
        script("cvland"),
        "--socket",
        str(socket),
        "--interface",
        ifname,
        "--state-dir",
        str(state_dir),
        "--dns-mode",
        dns_mode,
        *extra,
    ]


def ctrl_argv(
    state_dir: Path, cvland_socket: Path, hostname: str, join_command: str = "", *extra: str
) -> list[str]:
    """cvlan-ctrl's command line; with a join command it enrols first (server, token, CA pin)."""
    argv = [
        script("cvlan-ctrl"),
        "--state-dir",
        str(state_dir),
        "--cvland-socket",
        str(cvland_socket),
        "--hostname",
        hostname,
    ]
    if join_command:
        server, token, pin = join_args(join_command)
        argv += ["--server", server, "--token", token, "--ca-pin", pin]
    return argv + list(extra)
