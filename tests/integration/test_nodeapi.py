"""The node API end to end over real TLS on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import random
import ssl
import time
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cvlan.client import tls
from cvlan.client.controller import ControlError, NodeApiClient
from cvlan.common import pki
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.nodeapi import NODEAPI_KEY, lean
from cvlan.wire import certid
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.nodes import ca_pem, enrol, make_token


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


async def _raw(rc: RunningController, path: str, body: bytes, ct: str = wire.CT_PROTO) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cadata=ca_pem(rc))
    async with (
        aiohttp.ClientSession() as s,
        s.post(rc.url + path, data=body, ssl=ctx, headers={"Content-Type": ct}) as r,
    ):
        return r.status, await r.read()


async def _token_uses(rc: RunningController, tenant: str = "acme") -> list[int]:
    items = (await rc.api().get(f"/api/v1/tenants/{tenant}/tokens")).ok()["items"]
    return [int(t["uses"]) for t in items]


async def _node_count(rc: RunningController) -> int:
    return int((await rc.api().get("/api/v1/nodes")).ok()["total"])


async def test_discover_is_public_and_carries_the_pinned_ca(controller: RunningController) -> None:
    assert controller.c is not None
    d = await NodeApiClient.discover_pinned(controller.url, controller.c.ca.fingerprint)
    assert d.capability_version == wire.CAPABILITY_VERSION and d.ca_pem == ca_pem(controller)
    with pytest.raises(ControlError, match="does not match the pinned") as ei:
        await NodeApiClient.discover_pinned(controller.url, "sha256:" + "ab" * 32)
    assert not ei.value.retryable


async def test_renew_gives_a_working_certificate(controller: RunningController) -> None:
    token = await make_token(controller)
    a = await enrol(controller, token)
    key_pem, csr = tls.new_key_and_csr()
    r = await a.client.renew(csr)
    assert (
        r.certificate_pem != a.reg.certificate_pem and r.certificate_not_after >= a.reg.certificate_not_after
    )
    b = NodeApiClient(controller.url, ca_pem(controller), r.certificate_pem, key_pem)
    resp = await b.poll(0)
    assert resp.map.self.node_id == a.node_id
    (n,) = (await controller.api().get("/api/v1/nodes")).ok()["items"]
    assert n["cert_not_after"] is not None
    await a.client.close()
    await b.close()


async def test_new_nodes_get_ed25519_certificates_and_p256_keys_keep_working(
    controller: RunningController,
) -> None:
    a = await enrol(controller, await make_token(controller))
    cert = x509.load_pem_x509_certificate(a.reg.certificate_pem.encode())
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    # A node whose key was made as P-256 (before keys were Ed25519) renews with that key and polls.
    old_key, _ = pki.new_csr("old-node", "p256")
    r = await a.client.renew(tls.csr_for_key(old_key.decode()))
    renewed = x509.load_pem_x509_certificate(r.certificate_pem.encode())
    assert isinstance(renewed.public_key(), ec.EllipticCurvePublicKey)
    b = NodeApiClient(controller.url, ca_pem(controller), r.certificate_pem, old_key.decode())
    assert (await b.poll(0)).map.self.node_id == a.node_id
    await a.client.close()
    await b.close()


async def test_reregister_same_key_is_idempotent_only_with_its_certificate(
    controller: RunningController,
) -> None:
    token = await make_token(controller, uses=3)
    a = await enrol(controller, token)
    _, csr = tls.new_key_and_csr()
    again = await a.client.register("", a.wg_key, csr, "host")
    assert again.node_id == a.node_id and again.address == a.reg.address
    assert await _token_uses(controller) == [1]
    anon = NodeApiClient(controller.url, ca_pem(controller))
    other = await make_token(controller, uses=3)
    with pytest.raises(ControlError) as ei:
        await anon.register(other, a.wg_key, csr, "thief")
    assert ei.value.status == 409
    assert sorted(await _token_uses(controller)) == [0, 1] and await _node_count(controller) == 1
    await anon.close()
    await a.client.close()


async def test_retry_after_a_lost_registration_answer_gets_the_same_node(
    controller: RunningController,
) -> None:
    """A node whose registration answer was lost retries with the same token and key: it gets its node
    (and a certificate for its new CSR) instead of a conflict, and the token is not used twice."""
    token = await make_token(controller)  # single use
    a = await enrol(controller, token)
    anon = NodeApiClient(controller.url, ca_pem(controller))
    _, csr = tls.new_key_and_csr()
    again = await anon.register(token, a.wg_key, csr, "host")
    assert again.node_id == a.node_id and again.address == a.reg.address and again.certificate_pem
    assert await _token_uses(controller) == [1] and await _node_count(controller) == 1
    # Once the node has polled (and its liveness reached the database), the same request is refused:
    # the single-use token is spent.
    await a.client.poll(0)
    for _ in range(100):
        if (await controller.api().get("/api/v1/nodes")).ok()["items"][0]["last_seen"]:
            break
        await asyncio.sleep(0.1)
    with pytest.raises(ControlError) as ei:
        await anon.register(token, a.wg_key, csr, "host")
    assert ei.value.status == 401 and "no uses left" in str(ei.value)
    await anon.close()
    await a.client.close()


async def test_single_use_token_race_has_exactly_one_winner(controller: RunningController) -> None:
    token = await make_token(controller)

    async def one(i: int) -> int:
        try:
            await enrol(controller, token, f"racer{i}")
            return 1
        except ControlError as e:
            assert e.status == 401 and "no uses left" in e.message, e.message
            return 0

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert sum(results) == 1
    assert await _node_count(controller) == 1 and await _token_uses(controller) == [1]


async def test_token_of_another_tenant_is_refused_for_an_enrolled_node(controller: RunningController) -> None:
    a = await enrol(controller, await make_token(controller, "acme"))
    other = await make_token(controller, "globex", "lab")
    _, csr = tls.new_key_and_csr()
    with pytest.raises(ControlError) as ei:
        await a.client.register(other, os.urandom(32), csr, "sneaky")
    assert ei.value.status == 403
    assert await _token_uses(controller, "globex") == [0] and await _node_count(controller) == 1
    await a.client.close()


async def test_bad_bodies_are_refused_and_nothing_is_written(controller: RunningController) -> None:
    token = await make_token(controller)
    status, body = await _raw(controller, "/v1/register", b"\xff\xff\xff\x0f garbage")
    assert status == 422 and b"not a valid protobuf" in body
    status, _ = await _raw(controller, "/v1/register", b"\x00" * (wire.MAX_REQUEST_BYTES + 10))
    assert status == 413
    _, csr = tls.new_key_and_csr()
    req = pb.RegisterRequest(token=token, wg_public_key=os.urandom(32), csr_pem=csr, hostname="h")
    status, body = await _raw(controller, "/v1/register", req.SerializeToString())
    assert status == 412 and b"capability_version" in body
    req.capability_version = wire.CAPABILITY_VERSION
    req.csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    status, _ = await _raw(controller, "/v1/register", req.SerializeToString())
    assert status == 422
    req.csr_pem, req.wg_public_key = csr, b"short"
    status, _ = await _raw(controller, "/v1/register", req.SerializeToString())
    assert status == 422
    status, _ = await _raw(controller, "/v1/poll", pb.PollRequest(capability_version=1).SerializeToString())
    assert status == 401
    assert await _node_count(controller) == 0 and await _token_uses(controller) == [0]


async def test_json_is_accepted_for_debugging(controller: RunningController) -> None:
    token = await make_token(controller)
    _, csr = tls.new_key_and_csr()
    body = json.dumps(
        {
            "capability_version": 1,
            "token": token,
            "wg_public_key": base64.b64encode(os.urandom(32)).decode(),
            "csr_pem": csr,
            "hostname": "json-host",
        }
    ).encode()
    status, raw = await _raw(controller, "/v1/register", body, wire.CT_JSON)
    assert status == 200, raw
    got = json.loads(raw)
    assert got["node_name"] == "json-host" and got["address"].endswith("/32")


async def test_poll_rejects_bad_endpoints(controller: RunningController) -> None:
    a = await enrol(controller, await make_token(controller))
    with pytest.raises(ControlError) as ei:
        await a.client.poll(0, endpoints=["not-an-endpoint"])
    assert ei.value.status == 422
    await a.client.close()


async def test_certificate_from_another_ca_is_refused(controller: RunningController, tmp_path: Path) -> None:
    a = await enrol(controller, await make_token(controller))
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
    key_pem, csr = tls.new_key_and_csr()
    cert = rogue.issue_client(
        csr.encode(),
        common_name="x",
        lifetime=dt.timedelta(days=1),
        identity={
            certid.OID_NODE_ID: str(a.node_id),
            certid.OID_TENANT_ID: str(a.reg.tenant_id),
            certid.OID_CVLAN_ID: str(a.reg.cvlan_id),
            certid.OID_WG_KEY: a.wg_key.hex(),
            certid.OID_KIND: "node",
        },
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    c = NodeApiClient(controller.url, ca_pem(controller), pem, key_pem)
    with pytest.raises(ControlError) as ei:
        await c.poll(0)
    assert ei.value.status == 0  # refused in the TLS handshake, before any HTTP
    await c.close()
    await a.client.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_expired_certificate_gets_a_reenrol_error(db_url: str, tmp_path: Path) -> None:
    # Long enough that enrolment and the first poll finish inside it on a loaded machine.
    rc = await RunningController(tmp_path / "d", db_url, node_cert_lifetime_s=5).start()
    try:
        a = await enrol(rc, await make_token(rc))
        await a.client.poll(0)  # keep-alive connection made while the certificate was valid
        expires = tls.cert_not_after(a.reg.certificate_pem)
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.5)
        with pytest.raises(ControlError) as ei:
            await a.client.poll(0)
        assert ei.value.reason == "certificate_expired" and "re-enrol" in ei.value.message
        await a.client.close()
        fresh = NodeApiClient(rc.url, ca_pem(rc), a.reg.certificate_pem, a.key_pem)
        with pytest.raises(ControlError) as ei:
            await fresh.poll(0)
        assert not ei.value.retryable
        await fresh.close()
    finally:
        await rc.stop()


async def test_liveness_is_flushed_in_batches(controller: RunningController) -> None:
    token = await make_token(controller, uses=3)
    a = await enrol(controller, token, "alpha")
    await a.client.poll(0, endpoints=["198.51.100.4:51820"], health=pb.HealthSummary(peers_total=0))
    assert controller.c is not None
    api = controller.c.app[NODEAPI_KEY]
    await api.liveness.flush()
    (n,) = (await controller.api().get("/api/v1/nodes")).ok()["items"]
    assert n["online"] is True and n["endpoints"] == ["198.51.100.4:51820"] and n["map_version"] == 0
    loads = api.mapper.loads
    r = await a.client.poll(0)
    for _ in range(20):
        assert (await a.client.poll(r.map_version)).unchanged
    assert api.mapper.loads == loads  # unchanged answers came from memory
    await a.client.close()


async def test_relay_map_reaches_discover_and_long_polling_nodes(controller: RunningController) -> None:
    a = await enrol(controller, await make_token(controller))
    held = (await a.client.poll(0)).map_version
    waiting = asyncio.create_task(a.client.poll(held, long_poll_s=30))
    api = controller.api()
    (await api.post("/api/v1/regions", {"name": "eu"})).ok()
    relay = {"name": "r1", "region": "eu", "url": "https://relay.example:443", "stun": "192.0.2.5:3478"}
    (await api.post("/api/v1/relays", relay)).ok()
    assert controller.c is not None
    assert await controller.c.app[NODEAPI_KEY].mapper.refresh_relays()  # the periodic refresh, now
    got = await asyncio.wait_for(waiting, 10)
    (region,) = got.map.relay_map.regions
    assert region.name == "eu" and [r.url for r in region.relays] == ["https://relay.example:443"]
    assert region.relays[0].stun == "192.0.2.5:3478"
    d = await NodeApiClient.discover_pinned(controller.url, controller.c.ca.fingerprint)
    assert [r.name for r in d.relay_map.regions] == ["eu"]
    await a.client.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_identity_from_a_trusted_proxy_header_only(db_url: str, tmp_path: Path) -> None:
    rc = await RunningController(tmp_path / "d", db_url, trusted_proxies=["127.0.0.0/8"]).start()
    plain = await RunningController(tmp_path / "d2", db_url.replace("cvlan.db", "other.db")).start()
    try:
        for ctl, want in ((rc, 200), (plain, 401)):
            a = await enrol(ctl, await make_token(ctl))
            header = urllib.parse.quote(a.reg.certificate_pem)
            body = pb.PollRequest(capability_version=1).SerializeToString()
            ctx = ssl.create_default_context(cadata=ca_pem(ctl))  # no client certificate on this connection
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    ctl.url + "/v1/poll",
                    data=body,
                    ssl=ctx,
                    headers={"Content-Type": wire.CT_PROTO, "X-Client-Cert": header},
                ) as r,
            ):
                assert r.status == want, await r.text()
                if want == 200:
                    assert wire.decode(pb.PollResponse, await r.read()).map.self.node_id == a.node_id
            await a.client.close()
        # A forged certificate (another CA) in the header is refused even from a trusted proxy.
        rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
        _, csr = tls.new_key_and_csr()
        fake = rogue.issue_client(csr.encode(), common_name="x", lifetime=dt.timedelta(days=1), identity={})
        ctx = ssl.create_default_context(cadata=ca_pem(rc))
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                rc.url + "/v1/poll",
                data=b"",
                ssl=ctx,
                headers={
                    "X-Client-Cert": urllib.parse.quote(
                        fake.public_bytes(serialization.Encoding.PEM).decode()
                    )
                },
            ) as r,
        ):
            assert r.status == 401
    finally:
        await rc.stop()
        await plain.stop()


async def test_mutated_bodies_are_refused_cleanly(controller: RunningController) -> None:
    """Seeded mutation fuzz over HTTP: bit flips, truncations and splices of valid messages."""
    token = await make_token(controller)
    _, csr = tls.new_key_and_csr()
    wrong = token[:-6] + "zzzzzz"  # well-formed but not valid: nothing can register
    seeds = [
        pb.RegisterRequest(
            capability_version=1, token=wrong, wg_public_key=os.urandom(32), csr_pem=csr, hostname="fuzz"
        ).SerializeToString(),
        pb.PollRequest(capability_version=1, map_version=5, endpoints=["192.0.2.1:1"]).SerializeToString(),
    ]
    rng = random.Random(1234)
    statuses: set[int] = set()
    for i in range(150):
        b = bytearray(rng.choice(seeds))
        op = i % 3
        if op == 0:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b = b[: rng.randrange(len(b))]
        else:
            b = b[: rng.randrange(len(b))] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        status, body = await _raw(controller, rng.choice(["/v1/register", "/v1/poll", "/v1/renew"]), bytes(b))
        assert status in (401, 409, 412, 422), (status, body[:200])
        assert json.loads(body)["error"]["message"]
        statuses.add(status)
    assert await _node_count(controller) == 0 and await _token_uses(controller) == [0]
    a = await enrol(controller, token)  # and the controller is still fine
    assert not (await a.client.poll(0)).unchanged
    await a.client.close()


async def test_report_stores_denied_flows_and_health(controller: RunningController) -> None:
    a = await enrol(controller, await make_token(controller))
    r1 = await a.client.poll(0)
    flows = [
        pb.DeniedFlow(src="100.64.0.9", dst=a.reg.address.split("/")[0], proto="tcp", dport=22, packets=7)
    ]
    got = await a.client.report(flows, pb.HealthSummary(peers_total=3, dataplane_error="wg down"))
    assert got.accepted == 1
    with pytest.raises(ControlError) as ei:
        await a.client.report([pb.DeniedFlow(src="nope", dst="100.64.0.1", proto="tcp")])
    assert ei.value.status == 422
    assert controller.c is not None
    await controller.c.app[NODEAPI_KEY].liveness.flush()
    (d,) = (await controller.api().get("/api/v1/tenants/acme/denied")).ok()["items"]
    assert d["src"] == "100.64.0.9" and d["dport"] == 22 and d["packets"] == 7
    (n,) = (await controller.api().get("/api/v1/nodes")).ok()["items"]
    assert (
        n["health"]["dataplane_error"] == "wg down" and n["map_version"] == 0
    )  # a report keeps the held version
    await a.client.poll(r1.map_version)
    await controller.c.app[NODEAPI_KEY].liveness.flush()
    (n,) = (await controller.api().get("/api/v1/nodes")).ok()["items"]
    assert n["map_version"] == r1.map_version
    await a.client.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_stopping_answers_held_long_polls(db_url: str, tmp_path: Path) -> None:
    rc = await RunningController(tmp_path / "d", db_url).start()
    try:
        a = await enrol(rc, await make_token(rc))
        held = (await a.client.poll(0)).map_version
        waiting = asyncio.create_task(a.client.poll(held, long_poll_s=60))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.wait_for(rc.stop(), 20)  # well before the 60 s hold
        got = await asyncio.wait_for(waiting, 5)
        assert got.unchanged and got.map_version == held
        await a.client.close()
    finally:
        await rc.stop()


async def test_moved_node_gets_its_new_cvlan_and_old_peers_lose_it(controller: RunningController) -> None:
    a = await enrol(controller, await make_token(controller, uses=2))
    b = await enrol(controller, await make_token(controller))
    await make_token(controller, cvlan="lab")
    held_b = (await b.client.poll(0)).map_version
    waiting = asyncio.create_task(b.client.poll(held_b, long_poll_s=30))
    moved = (await controller.api().patch(f"/api/v1/tenants/acme/nodes/{a.node_id}", {"cvlan": "lab"})).ok()
    got_b = await asyncio.wait_for(waiting, 10)
    assert [p.node_id for p in got_b.map.peers] == []
    r = await a.client.poll(0)  # its certificate still names the old CVLAN
    assert r.map.self.cvlan_name == "lab" and r.map.self.address == f"{moved['address']}/32"
    await a.client.close()
    await b.client.close()


async def test_plain_polling_setting_is_advertised_and_holds_no_poll(db_url: str, tmp_path: Path) -> None:
    # max_long_poll_s = 0: nodes are told to poll plainly, and a long-poll is answered at once.
    rc = await RunningController(tmp_path / "d", db_url, max_long_poll_s=0).start()
    try:
        a = await enrol(rc, await make_token(rc))
        assert (await a.client.discover()).max_long_poll_s == 0
        held = (await a.client.poll(0)).map_version
        got = await asyncio.wait_for(a.client.poll(held, long_poll_s=30), 10)  # not held 30 s
        assert got.unchanged and got.map_version == held
        await a.client.close()
    finally:
        await rc.stop()


async def test_a_long_poll_that_starts_waiting_after_a_change_is_answered_with_it(
    controller: RunningController,
) -> None:
    """The proxy socket's lean server decides that a poll waits while it reads it, and the wait itself
    starts on a later turn of the event loop. A deletion committed in between must reach the poll at
    once: it used to wait the whole hold on the map of before the deletion and then answer
    "unchanged", so the node learnt of it one hold late (30 s with cvlan-ctrl)."""
    api = controller.c.app[NODEAPI_KEY]
    token = await make_token(controller, uses=2)
    a = await enrol(controller, token, "alpha")
    b = await enrol(controller, token, "beta")
    held = (await a.client.poll(0)).map_version
    ident = certid.node_identity(x509.load_pem_x509_certificate(a.reg.certificate_pem.encode()))
    req = pb.PollRequest(capability_version=wire.CAPABILITY_VERSION, map_version=held, long_poll_s=30)
    m, me = await api.mapper.map_for_node(ident.node_id, ident.tenant_id, ident.wg_key, ident.cvlan_id)
    head = lean.Head(lean.POLL, 0, b"", "", close=False, park=False)
    waiting = lean._poll(api, head, ident, req, m, me, None)
    assert isinstance(waiting, Coroutine)  # it waits: the map it holds is current
    (await controller.api().delete(f"/api/v1/tenants/acme/nodes/{b.node_id}")).ok()
    answer = await asyncio.wait_for(waiting, 10)  # well before the 30 s hold
    got = pb.PollResponse.FromString(answer) if isinstance(answer, bytes) else answer
    assert not got.unchanged and got.map_version != held
    assert [p.node_id for p in got.map.peers] == []
    await a.client.close()
    await b.client.close()
