"""In-process relays registered with a real controller, and nodes holding real controller-issued
certificates, for relay tests and benchmarks."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from cvlan.client.relay import node_ssl
from cvlan.controller.ops import cvlans, nodes
from cvlan.relay.__main__ import serve
from cvlan.relay.settings import RelaySettings
from cvlan.wire.certid import OID_CVLAN_ID, OID_KIND, OID_NODE_ID, OID_TENANT_ID, OID_WG_KEY
from tests.harness.controller import RunningController, free_port


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NodeCreds:
    node_id: int
    tenant_id: int
    cvlan_id: int
    wg_key: bytes
    cert_pem: str
    key_pem: str
    ca_pem: str
    wg_private: bytes = b""

    def ssl(self) -> ssl.SSLContext:
        return node_ssl(self.cert_pem, self.key_pem, self.ca_pem)


def _csr() -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return csr.public_bytes(serialization.Encoding.PEM), pem


async def enroll_node(
    rc: RunningController,
    token: str,
    name: str,
    lifetime: dt.timedelta = dt.timedelta(days=1),
    now: dt.datetime | None = None,
) -> NodeCreds:
    """Register a node with an enrollment token (domain operation) and sign its certificate with the
    controller CA, carrying the identity extensions node certificates carry."""
    assert rc.c is not None
    ctx = rc.c.ctx
    wg_priv = x25519.X25519PrivateKey.generate()
    wg = wg_priv.public_key().public_bytes_raw()
    async with ctx.tx() as s:
        tok = await cvlans.consume_token(ctx, s, token)
        n = await nodes.create(ctx, s, tok, wg, name)
        ident = {
            OID_NODE_ID: str(n.id),
            OID_TENANT_ID: str(n.tenant_id),
            OID_CVLAN_ID: str(n.cvlan_id),
            OID_WG_KEY: wg.hex(),
            OID_KIND: "node",
        }
        node_id, tenant_id, cvlan_id = n.id, n.tenant_id, n.cvlan_id
    csr, key_pem = _csr()
    cert = rc.c.ca.issue_client(csr, common_name=f"node:{name}", lifetime=lifetime, identity=ident, now=now)
    return NodeCreds(
        node_id,
        tenant_id,
        cvlan_id,
        wg,
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem,
        rc.c.ca.cert_pem.decode(),
        wg_priv.private_bytes_raw(),
    )


@dataclass
class Fleet:
    """A tenant with CVLANs and reusable enrollment tokens, created through the management API."""

    rc: RunningController
    tenant: str
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def create(cls, rc: RunningController, tenant: str, cvlan_names: list[str]) -> Fleet:
        api = rc.api()
        api_ok = (await api.post("/api/v1/tenants", {"name": tenant})).ok()
        f = cls(rc, api_ok["name"])
        for cv in cvlan_names:
            (await api.post(f"/api/v1/tenants/{tenant}/cvlans", {"name": cv})).ok()
            tok = (await api.post(f"/api/v1/tenants/{tenant}/tokens", {"cvlan": cv, "reusable": True})).ok()
            f.tokens[cv] = tok["token"]
        return f

    async def node(self, cvlan: str, name: str) -> NodeCreds:
        return await enroll_node(self.rc, self.tokens[cvlan], name)


class RunningRelay:
    """cvlan-relay's serve() in this event loop, bootstrapped with the printed token and CA pin."""

    def __init__(self, rc: RunningController, state_dir: Path, name: str = "r1", region: str = "eu") -> None:
        self.rc = rc
        self.state_dir = state_dir
        self.name = name
        self.region = region
        self.port = free_port()
        self.stun_port = free_udp_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.command = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[int] | None = None
        self.settings: RelaySettings | None = None

    async def create(self) -> RunningRelay:
        api = self.rc.api()
        regions = (await api.get("/api/v1/regions")).ok()["items"]
        if self.region not in [r["name"] for r in regions]:
            (await api.post("/api/v1/regions", {"name": self.region})).ok()
        out = (
            await api.post(
                "/api/v1/relays",
                {
                    "name": self.name,
                    "region": self.region,
                    "url": self.url,
                    "stun": f"127.0.0.1:{self.stun_port}",
                },
            )
        ).ok()
        self.command = out["command"]
        token = re.search(r"--token (\S+)", self.command)
        pin = re.search(r"--ca-pin (\S+)", self.command)
        assert token and pin, self.command
        self.settings = RelaySettings(
            server=self.rc.url,
            token=token.group(1),
            ca_pin=pin.group(1),
            listen=f"127.0.0.1:{self.port}",
            stun_listen=f"127.0.0.1:{self.stun_port}",
            state_dir=self.state_dir,
            keepalive_s=5,
            revalidate_s=1.0,
        )
        return self

    async def start(self, **overrides: object) -> RunningRelay:
        assert self.settings is not None
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(settings, self._stop))
        await self.wait_listening()
        return self

    async def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()  # raises the bootstrap error, if any
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 10)
            self._task = None

    def anon_ssl(self) -> ssl.SSLContext:
        """TLS that trusts the controller CA but presents no client certificate."""
        assert self.rc.c is not None
        return ssl.create_default_context(cadata=self.rc.c.ca.cert_pem.decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; counters without their _total suffix stripped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
