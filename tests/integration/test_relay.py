"""cvlan-relay in-process against a real controller: bootstrap, forwarding within a CVLAN only,
refusals, queue drops, replacement, revocation and restart. Every count is read from /metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvlan.client.bootstrap import ControllerCallError
from cvlan.client.relay import node_ssl, ws_url
from cvlan.controller.ca import CertificateAuthority
from cvlan.devtools.harness.enrol import EnrolledNode
from cvlan.relay.bootstrap import ensure_identity, load_identity
from cvlan.wire import relayproto as rp
from tests.harness.controller import RunningController
from tests.harness.relay import (
    Fleet,
    Relays,
    RunningRelay,
    connect,
    enrol_at,
    flood,
    metrics,
    ws_status,
)


@pytest.fixture
def rc(sqlite_controller: RunningController) -> RunningController:
    return sqlite_controller


@pytest.fixture
async def relay(relays: Relays) -> RunningRelay:
    return await relays.relay()


async def test_bootstrap_writes_private_state_and_start_command(relay: RunningRelay) -> None:
    assert relay.command.startswith("cvlan-relay --server https://127.0.0.1:")
    for name in ("relay.key", "relay.crt", "ca.crt", "relay.json", "token"):
        mode = stat.S_IMODE(os.stat(relay.state_dir / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    cert = x509.load_pem_x509_certificate((relay.state_dir / "relay.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    api = relay.rc.api()
    listed = (await api.get("/api/v1/relays")).ok()["items"]
    assert listed[0]["last_seen"] is not None


async def test_two_nodes_of_one_cvlan_exchange_packets(rc: RunningController, relay: RunningRelay) -> None:
    fleet = await Fleet.create(rc, "acme", ["office"])
    a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
    ca, ia = await connect(relay, a)
    cb, ib = await connect(relay, b)
    try:
        assert ca.region == "eu"
        ca.send(b.wg_key, b"\x04hello-b")
        cb.send(a.wg_key, b"\x04hello-a")
        await ib.wait(1)
        await ia.wait(1)
        assert ib.items == [(a.wg_key, b"\x04hello-b")]
        assert ia.items == [(b.wg_key, b"\x04hello-a")]
        assert await ca.ping() < 5
        m = await metrics(relay)
        assert m["cvlan_relay_clients"] == 2
        assert m['cvlan_relay_frames_total{direction="forwarded"}'] == 2
        assert m['cvlan_relay_bytes_total{direction="forwarded"}'] == 2 * len(b"\x04hello-b")
    finally:
        await ca.close()
        await cb.close()


async def test_send_to_another_cvlan_is_refused_and_counted(
    rc: RunningController, relay: RunningRelay
) -> None:
    fleet = await Fleet.create(rc, "acme", ["office", "lab"])
    other = await Fleet.create(rc, "globex", ["office"])
    a, c, g = await fleet.node("office", "a"), await fleet.node("lab", "c"), await other.node("office", "g")
    ca, ia = await connect(relay, a)
    cc, ic = await connect(relay, c)
    cg, ig = await connect(relay, g)
    try:
        cc.send(a.wg_key, b"cross-cvlan")
        cg.send(a.wg_key, b"cross-tenant")
        cc.send(os.urandom(32), b"nobody")
        async with asyncio.timeout(5):
            while a.wg_key not in cc.stats.gone or a.wg_key not in cg.stats.gone:
                await asyncio.sleep(0.02)
        ca.send(c.wg_key, b"back")
        await asyncio.sleep(0.3)
        assert ia.items == [] and ic.items == [] and ig.items == []
        m = await metrics(relay)
        assert m['cvlan_relay_drops_total{reason="cross_cvlan"}'] == 3
        assert m['cvlan_relay_drops_total{reason="unknown_dest"}'] == 1
        assert m['cvlan_relay_frames_total{direction="forwarded"}'] == 0
    finally:
        for x in (ca, cc, cg):
            await x.close()


def _other_ca_cert(tmp: Path, creds: EnrolledNode) -> ssl.SSLContext:
    other = CertificateAuthority.load_or_create(tmp)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    from cvlan.wire.certid import OID_CVLAN_ID, OID_NODE_ID, OID_TENANT_ID, OID_WG_KEY

    ident = {
        OID_NODE_ID: str(creds.node_id),
        OID_TENANT_ID: str(creds.tenant_id),
        OID_CVLAN_ID: str(creds.cvlan_id),
        OID_WG_KEY: creds.wg_key.hex(),
    }
    cert = other.issue_client(
        csr.public_bytes(serialization.Encoding.PEM),
        common_name="x",
        lifetime=dt.timedelta(days=1),
        identity=ident,
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return node_ssl(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, creds.ca_pem)


async def test_clients_without_a_valid_certificate_are_refused(
    rc: RunningController, relay: RunningRelay, tmp_path: Path
) -> None:
    fleet = await Fleet.create(rc, "acme", ["office"])
    a = await fleet.node("office", "a")
    assert await ws_status(relay, relay.anon_ssl()) == 401
    assert await ws_status(relay, _other_ca_cert(tmp_path / "other", a)) != 101
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)  # beyond the 7-day certificate lifetime
    expired = await enrol_at(rc, fleet.tokens["office"], "old", past)
    assert await ws_status(relay, expired.ssl()) != 101
    assert await ws_status(relay, a.ssl()) == 101
    m = await metrics(relay)
    assert m['cvlan_relay_refused_connections_total{reason="no_cert"}'] == 1
    # With TLS 1.3 the client learns of the refusal only after sending its request, and the HTTP
    # client may retry once: at least one refusal per bad certificate.
    assert m['cvlan_relay_refused_connections_total{reason="tls_handshake"}'] >= 2
    assert m["cvlan_relay_connects_total"] == 1


async def test_slow_receiver_loses_oldest_frames_first(relays: Relays) -> None:
    r = await relays.relay(queue_len=8)
    a, b = await relays.nodes("a", "b")
    n = 20_000
    got = await flood(r, a, b, n, 1200, every=500)
    assert got.dropped > 0
    assert len(got.received) + got.dropped == n
    assert got.received == sorted(got.received)  # order kept; what was lost is older than what was kept
    assert got.received[-1] == n - 1


async def test_second_connection_with_same_key_replaces_first(
    rc: RunningController, relay: RunningRelay
) -> None:
    fleet = await Fleet.create(rc, "acme", ["office"])
    a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
    first, i1 = await connect(relay, b)
    ca, _ = await connect(relay, a)
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(relay.url), ssl=b.ssl()) as second:
        async with asyncio.timeout(5):
            while first.stats.replaced == 0:
                await asyncio.sleep(0.02)
        # The replaced client was told so and waits before it tries again: it has not taken the key back.
        await asyncio.sleep(0.5)
        assert not first.connected.is_set() and first.stats.connects == 1
        await first.close()
        ca.send(b.wg_key, b"to-second")
        async with asyncio.timeout(5):
            while True:
                f = rp.parse_frame((await second.receive()).data)
                if isinstance(f, rp.RecvPacket):
                    break
        assert f.packet == b"to-second" and i1.items == []
        m = await metrics(relay)
        assert m["cvlan_relay_replaced_connections_total"] == 1
        assert m["cvlan_relay_clients"] == 2
    await ca.close()


async def test_relay_restart_client_reconnects_from_saved_identity(
    rc: RunningController, relay: RunningRelay
) -> None:
    fleet = await Fleet.create(rc, "acme", ["office"])
    a, b = await fleet.node("office", "a"), await fleet.node("office", "b")
    ca, _ = await connect(relay, a)
    cb, ib = await connect(relay, b)
    try:
        await relay.stop()
        async with asyncio.timeout(5):
            while ca.connected.is_set() or cb.connected.is_set():
                await asyncio.sleep(0.02)
        await relay.start(token="")  # no token: the identity in the state dir is enough
        await asyncio.wait_for(asyncio.gather(ca.connected.wait(), cb.connected.wait()), 10)
        async with asyncio.timeout(5):
            while not ib.items:
                ca.send(b.wg_key, b"after-restart")
                await asyncio.sleep(0.1)
        assert ib.items[0] == (a.wg_key, b"after-restart")
        assert ca.stats.connects == 2
    finally:
        await ca.close()
        await cb.close()


async def test_deleted_node_is_disconnected_and_refused(
    controller: RunningController, tmp_path: Path
) -> None:
    r = await (await RunningRelay(controller, tmp_path / "relay").create()).start()
    try:
        fleet = await Fleet.create(controller, "acme", ["office"])
        a = await fleet.node("office", "a")
        ca, _ = await connect(r, a)
        api = controller.api()
        (await api.delete(f"/api/v1/tenants/acme/nodes/{a.node_id}")).ok()
        async with asyncio.timeout(10):
            while ca.connected.is_set():
                await asyncio.sleep(0.05)
        await ca.close()
        assert await ws_status(r, a.ssl()) == 403
        m = await metrics(r)
        assert m['cvlan_relay_refused_connections_total{reason="revoked"}'] >= 2
    finally:
        await r.stop()


async def test_a_stale_certificate_is_renewed_with_the_kept_token(relay: RunningRelay) -> None:
    """The relay keeps its bootstrap token, as the vrouter does: renewal needs no --token."""
    assert relay.settings is not None
    before = load_identity(relay.state_dir)
    assert before is not None
    serial = before.cert.serial_number  # .cert reads the file, which renewal replaces
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)  # the certificate is no longer fresh
    renewed = await ensure_identity(relay.settings.model_copy(update={"token": ""}), later)
    assert renewed.cert.serial_number != serial


async def test_bootstrap_refuses_wrong_pin_and_bad_token(rc: RunningController, tmp_path: Path) -> None:
    r = await RunningRelay(rc, tmp_path / "relay").create()
    assert r.settings is not None
    wrong_pin = r.settings.model_copy(update={"ca_pin": "sha256:" + "0" * 64})
    with pytest.raises(ControllerCallError, match="does not match --ca-pin"):
        await ensure_identity(wrong_pin)
    bad_token = r.settings.model_copy(update={"token": "cvrb_0000_nope"})
    with pytest.raises(ControllerCallError, match="http 401: invalid relay bootstrap token"):
        await ensure_identity(bad_token)
    no_token = r.settings.model_copy(update={"token": ""})
    with pytest.raises(ControllerCallError, match="no --token given"):
        await ensure_identity(no_token)
    assert not (tmp_path / "relay").exists()


async def _served_serial(r: RunningRelay) -> int:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", r.port, ssl=r.anon_ssl(), server_hostname="127.0.0.1"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def test_relay_renews_its_certificate_while_running(
    relays: Relays, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvlan.client import bootstrap
    from cvlan.relay import __main__ as relay_main

    monkeypatch.setattr(relay_main, "RENEW_CHECK_S", 0.2)
    r = await relays.relay()
    first = await _served_serial(r)
    monkeypatch.setattr(bootstrap, "fresh", lambda cert, now: False)  # as if 2/3 of 90 days had passed
    async with asyncio.timeout(10):
        while (serial := await _served_serial(r)) == first:
            await asyncio.sleep(0.1)
    monkeypatch.setattr(bootstrap, "fresh", lambda cert, now: True)
    await asyncio.sleep(0.5)
    assert x509.load_pem_x509_certificate(
        (r.state_dir / "relay.crt").read_bytes()
    ).serial_number == await _served_serial(r)
    assert serial != first
    # The controller accepts the renewed certificate for revocation checks.
    (a,) = await relays.nodes("a")
    ca, _ = await connect(r, a)
    await ca.close()
    assert (await metrics(r)).get("cvlan_relay_revocation_check_errors_total") == 0
