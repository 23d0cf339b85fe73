"""A node's life after enrolment: disabled and enabled again, tags changed by an admin, ephemeral
nodes removed once offline."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvlan.agent.daemon import FatalError, wg_public
from cvlan.agent.state import StateStore
from cvlan.client import tls
from cvlan.client.controller import ControlError, NodeApiClient
from cvlan.common.clock import FakeClock
from cvlan.controller.db.models import Node
from cvlan.controller.nodeapi.handlers import NODEAPI_KEY
from cvlan.controller.ops import nodes as node_ops
from cvlan.controller.ops import reauth as reauth_ops
from cvlan.wire.nodeproto import CAPABILITY_VERSION, reauth_message, wg_key_proof
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.fake_cvland import FakeCvland
from tests.harness.nodes import ca_pem, enrol, make_token
from tests.harness.seed import seed_tenant
from tests.integration.test_agent import Agent, nodes, opts, running, until

NODES = "/api/v1/tenants/acme/nodes"


async def test_disabled_node_is_dropped_at_once_and_comes_back_when_enabled(
    controller: RunningController, tmp_path: Path
) -> None:
    token = await make_token(controller, uses=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ca = await FakeCvland(tmp_path / "a" / "cvland.sock", ["192.0.2.1:51820"]).start()
    cb = await FakeCvland(tmp_path / "b" / "cvland.sock", ["192.0.2.2:51820"]).start()
    a = Agent(opts(controller, tmp_path / "a", token, hostname="a"))
    b = Agent(opts(controller, tmp_path / "b", token, hostname="b"))
    api = controller.api()
    async with running(a), running(b) as b_task:
        await until(lambda: bool(ca.applied) and {p.name for p in ca.applied[-1].peers} == {"b"})
        await until(lambda: bool(cb.applied) and {p.name for p in cb.applied[-1].peers} == {"a"})
        before = {n["name"]: n for n in await nodes(controller)}["b"]
        got = (await api.post(f"{NODES}/b/disable", {})).ok()
        assert got["disabled"] is True and got["id"] == before["id"]
        # The peer's long-poll is woken: b leaves its map; b itself is refused, drops its peers and
        # keeps running, asking again.
        await until(lambda: ca.applied[-1].peers == [])
        await until(lambda: b.disabled and cb.applied[-1].peers == [])
        assert not b_task.done()
        # Disabling twice changes nothing and is not audited twice.
        assert (await api.post(f"{NODES}/b/disable", {})).ok()["disabled"] is True
        (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.disable")).ok()["items"]
        assert entry["before"]["disabled"] is False and entry["after"]["disabled"] is True
        assert (await api.post(f"{NODES}/b/enable", {})).ok()["disabled"] is False
        await until(lambda: {p.name for p in ca.applied[-1].peers} == {"b"})
        await until(lambda: not b.disabled and {p.name for p in cb.applied[-1].peers} == {"a"})
    after = {n["name"]: n for n in await nodes(controller)}["b"]
    assert (after["id"], after["address"], after["wg_public_key"]) == (
        before["id"],
        before["address"],
        before["wg_public_key"],
    )
    assert cb.applied[-1].node_id == before["id"] and cb.applied[-1].address.startswith(before["address"])
    (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.enable")).ok()["items"]
    assert entry["after"]["disabled"] is False
    await ca.stop()
    await cb.stop()


async def test_disabled_node_requests_are_refused_with_the_reason(controller: RunningController) -> None:
    token = await make_token(controller)
    n = await enrol(controller, token, "box")
    first = await n.client.poll(0)
    assert (await controller.api().post(f"{NODES}/{n.node_id}/disable", {})).status == 200
    csr = tls.new_key_and_csr()[1]
    for call in (lambda: n.client.poll(first.map_version), lambda: n.client.renew(csr)):
        try:
            await call()
        except ControlError as e:
            assert e.status == 403 and e.reason == "disabled" and "disabled by an administrator" in e.message
        else:
            raise AssertionError("a disabled node was answered")
    assert (await controller.api().post(f"{NODES}/{n.node_id}/enable", {})).status == 200
    again = await n.client.poll(0)
    assert again.map.self.node_id == n.node_id and again.map.self.address == first.map.self.address
    await n.client.close()


def _rules(resp: pb.PollResponse) -> list[tuple[str, list[str], str, list[str]]]:
    return [(r.action, sorted(r.src), r.proto, list(r.ports)) for r in resp.map.filter_rules]


async def test_admin_edits_tags_policy_follows_and_audit_has_before_and_after(
    controller: RunningController,
) -> None:
    db_tok = await make_token(controller, tags=["tag:db"])
    web = await enrol(controller, await make_token(controller), "web1")
    db = await enrol(controller, db_tok, "db1")
    api = controller.api()
    doc = {"rules": [{"src": ["tag:web"], "dst": ["tag:db"], "proto": "tcp", "ports": ["5432"]}]}
    (await api.request("PUT", "/api/v1/tenants/acme/cvlans/office/policy", json=doc)).ok()
    first = await db.client.poll(0)
    closed = _rules(first)
    assert [r[0] for r in closed] == ["drop"]  # no node is tagged web yet: nothing is accepted
    res = (await api.request("PUT", f"{NODES}/web1/tags", json={"tags": ["tag:web", "tag:web"]})).ok()
    assert res["tags"] == ["tag:web"]
    got = await db.client.poll(first.map_version)
    assert _rules(got) == [("accept", [web.reg.address], "tcp", ["5432"])]
    (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.tags")).ok()["items"]
    assert entry["before"]["tags"] == [] and entry["after"]["tags"] == ["tag:web"]
    # Bad tags: a clear error, nothing changed, nothing audited.
    for bad in (["bad tag"], ["region:a", "region:b"], "tag:web", [3]):
        r = await api.request("PUT", f"{NODES}/web1/tags", json={"tags": bad})
        assert r.status == 422, (bad, r.body)
    assert (await api.get(f"{NODES}/web1")).ok()["tags"] == ["tag:web"]
    assert (await db.client.poll(got.map_version)).unchanged
    # Clearing the tags closes the port again.
    assert (await api.request("PUT", f"{NODES}/web1/tags", json={"tags": []})).ok()["tags"] == []
    assert _rules(await db.client.poll(got.map_version)) == closed
    assert (await api.get("/api/v1/tenants/acme/audit?action=node.tags")).ok()["total"] == 2
    await web.client.close()
    await db.client.close()


async def test_only_admins_edit_tags_operators_disable(controller: RunningController) -> None:
    t = await seed_tenant(controller, controller.api(), "acme")
    node = f"{NODES}/{t.node['id']}"
    auditor, operator, admin = (controller.api(t.tokens[r]) for r in ("auditor", "operator", "admin"))
    assert (await auditor.post(node + "/disable", {})).status == 403
    assert (await operator.request("PUT", node + "/tags", json={"tags": ["tag:x"]})).status == 403
    assert (await operator.post(node + "/disable", {})).ok()["disabled"] is True
    assert (await operator.post(node + "/enable", {})).ok()["disabled"] is False
    assert (await admin.request("PUT", node + "/tags", json={"tags": ["tag:x"]})).ok()["tags"] == ["tag:x"]
    assert (await admin.post(f"{NODES}/no-such-node/disable", {})).status == 404


async def test_ephemeral_node_is_removed_after_its_offline_time(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    rc = await RunningController(tmp_path / "d", db_url, clock=clock, ephemeral_offline_s=60).start()
    try:
        api = rc.api()
        eph_tok = await make_token(rc, uses=3, ephemeral=True)
        assert (await api.get("/api/v1/tenants/acme/tokens")).ok()["items"][0]["ephemeral"] is True
        server = await enrol(rc, await make_token(rc), "server")
        runner = await enrol(rc, eph_tok, "runner")
        busy = await enrol(rc, eph_tok, "busy")
        for n in (server, runner, busy):
            await n.client.poll(0)
        await until(lambda: _all_seen(rc))
        assert {n["name"]: n["ephemeral"] for n in await nodes(rc)} == {
            "server": False,
            "runner": True,
            "busy": True,
        }
        clock.advance(59)
        await busy.client.poll(0)  # still polling: stays
        await until(lambda: _seen_after(rc, "busy", clock.now()))
        assert await _sweep(rc) == []  # nobody has been offline 60 s yet
        clock.advance(2)
        before = await server.client.poll(0)
        assert await _sweep(rc) == ["runner"]
        assert sorted(n["name"] for n in await nodes(rc)) == ["busy", "server"]
        # Its peers drop it at once; its address stays quarantined; the removal is audited.
        after = await server.client.poll(before.map_version)
        assert [p.name for p in after.map.peers] == ["busy"]
        again = await enrol(rc, eph_tok, "runner")
        assert again.reg.address != runner.reg.address
        (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.ephemeral_remove")).ok()["items"]
        assert entry["before"]["name"] == "runner" and entry["actor"] == "controller:ephemeral-sweeper"
        try:
            await runner.client.poll(0)
        except ControlError as e:
            assert e.reason == "revoked"
        else:
            raise AssertionError("a removed ephemeral node was answered")
        for n in (server, runner, busy, again):
            await n.client.close()
    finally:
        await rc.stop()


async def test_ephemeral_node_that_keeps_polling_is_never_removed(db_url: str, tmp_path: Path) -> None:
    """A poll that says nothing new is not written while the stored last_seen is recent enough; with
    an offline time shorter than offline_after_s the sweeper must still see every polling node as
    seen within it (it removed a node that had polled 11 s before)."""
    clock = FakeClock(dt.datetime.now(dt.UTC))
    settings = {"ephemeral_offline_s": 60, "offline_after_s": 300, "poll_interval_s": 10}
    rc = await RunningController(tmp_path / "d", db_url, clock=clock, **settings).start()
    try:
        assert rc.c is not None
        liveness = rc.c.app[NODEAPI_KEY].liveness
        runner = await enrol(rc, await make_token(rc, ephemeral=True), "runner")
        version = (await runner.client.poll(0)).map_version
        for i in range(3):  # the same map version: only the first is a change; 25 s apart
            clock.advance(25 if i else 0)
            await runner.client.poll(version)
            await liveness.flush()
        clock.advance(11)  # its last poll was 11 s ago
        assert await _sweep(rc) == []
        assert [n["name"] for n in await nodes(rc)] == ["runner"]
        clock.advance(50)  # it stopped polling 61 s ago: gone
        assert await _sweep(rc) == ["runner"]
        await runner.client.close()
    finally:
        await rc.stop()


async def test_removed_ephemeral_node_address_is_released_after_the_quarantine(
    db_url: str, tmp_path: Path
) -> None:
    """In a full CVLAN, the address of a removed ephemeral node is given to no one during the
    quarantine, and to the next node after it."""
    clock = FakeClock(dt.datetime.now(dt.UTC))
    settings = {"ephemeral_offline_s": 60, "address_quarantine_s": 600}
    rc = await RunningController(tmp_path / "d", db_url, clock=clock, **settings).start()
    try:
        api = rc.api()
        (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
        (await api.post("/api/v1/tenants/acme/cvlans", {"name": "tiny", "subnet": "100.99.0.0/30"})).ok()
        token = await make_token(rc, cvlan="tiny", uses=5, ephemeral=True)
        runners = [await enrol(rc, token, f"runner{i}") for i in range(2)]
        with pytest.raises(ControlError) as e:  # two addresses: full
            await enrol(rc, token, "third")
        assert e.value.status == 409, e.value.message
        clock.advance(61)  # neither ever polled: offline since they enrolled
        assert sorted(await _sweep(rc)) == ["runner0", "runner1"]
        with pytest.raises(ControlError) as e:  # quarantined
            await enrol(rc, token, "third")
        assert e.value.status == 409, e.value.message
        clock.advance(600)
        third = await enrol(rc, token, "third")
        assert third.reg.address in {r.reg.address for r in runners}
        for n in (*runners, third):
            await n.client.close()
    finally:
        await rc.stop()


async def _all_seen(rc: RunningController) -> bool:
    return all(n["last_seen"] for n in await nodes(rc))


async def _seen_after(rc: RunningController, name: str, t: dt.datetime) -> bool:
    n = (await rc.api().get(f"{NODES}/{name}")).ok()
    return bool(n["last_seen"]) and dt.datetime.fromisoformat(n["last_seen"]) >= t


async def _sweep(rc: RunningController) -> list[str]:
    assert rc.c is not None
    async with rc.c.ctx.tx() as s:
        return [n.name for n in await node_ops.sweep_ephemeral(rc.c.ctx, s)]


async def test_expired_node_reauthenticates_as_itself_and_bad_attempts_are_refused_and_audited(
    db_url: str, tmp_path: Path
) -> None:
    week_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    clock = FakeClock(week_ago)  # the certificates issued now have expired by the real clock
    rc = await RunningController(tmp_path / "d", db_url, clock=clock).start()
    try:
        api = rc.api()
        laptop = Agent(opts(rc, tmp_path, await make_token(rc), hostname="laptop"))
        old = await laptop.load_or_enrol()
        other_tenant_token = await make_token(rc, tenant="globex")
        clock.advance(8 * 86400)
        peer = await enrol(rc, await make_token(rc), "peer")
        fresh = await make_token(rc)
        wg = wg_public(old.wg_private_key)
        key_pem, csr = tls.new_key_and_csr()
        stranger_key = tls.new_key_and_csr()[0]
        anon = NodeApiClient(rc.url, old.ca_pem)
        priv = bytes.fromhex(old.wg_private_key)
        refused = [
            (fresh, priv, old.cert_pem, stranger_key),  # a TLS key the node does not hold
            (fresh, os.urandom(32), old.cert_pem, old.tls_key_pem),  # another WireGuard key
            (other_tenant_token, priv, old.cert_pem, old.tls_key_pem),  # a token of another tenant
            (fresh, priv, peer.reg.certificate_pem, peer.key_pem),  # another node's certificate
        ]
        for token, key, cert, signer in refused:
            with pytest.raises(ControlError) as e:
                await anon.reauthenticate(token, key, csr, cert, signer)
            assert e.value.status in (401, 403) and e.value.reason == "reauth_refused", e.value.message
        # The node's public WireGuard key, without its private key: the proof does not verify.
        message = reauth_message(fresh, wg, csr)
        forged = pb.RegisterRequest(
            capability_version=CAPABILITY_VERSION,
            token=fresh,
            wg_public_key=wg,
            csr_pem=csr,
            previous_certificate_pem=old.cert_pem,
            previous_key_signature=tls.sign(old.tls_key_pem, message),
            wg_key_proof=wg_key_proof(os.urandom(32), message),
        )
        with pytest.raises(ControlError, match="does not hold this WireGuard key"):
            await anon._call("/v1/register", forged, pb.RegisterResponse)
        await anon.close()
        audited = (await api.get("/api/v1/tenants/acme/audit?action=node.reauth_refused")).ok()["items"]
        # Each refusal is audited in the tenant of the node the certificate names.
        assert sorted(a["actor"] for a in audited) == sorted(
            [f"node:{old.node_id}"] * 4 + [f"node:{peer.node_id}"]
        )
        # The real node, with the same single-use token (the refusals did not use it up).
        cvland = await FakeCvland(tmp_path / "cvland.sock", ["192.0.2.7:51820"]).start()
        back = Agent(opts(rc, tmp_path, fresh, ca_pin=None, hostname="laptop"))
        async with running(back):
            await until(lambda: bool(cvland.applied) and cvland.applied[-1].peers != [])
        st = cvland.applied[-1]
        assert st.node_id == old.node_id and st.address == old.address
        assert [p.name for p in st.peers] == ["peer"]
        assert [n["id"] for n in await nodes(rc) if n["name"] == "laptop"] == [old.node_id]
        seen = await peer.client.poll(0)
        assert [(p.name, list(p.allowed_ips)) for p in seen.map.peers] == [("laptop", [old.address])]
        (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.reauth")).ok()["items"]
        assert entry["target_id"] == str(old.node_id)
        await peer.client.close()
        await cvland.stop()
    finally:
        await rc.stop()


def test_agent_token_file_errors_are_one_line(tmp_path: Path) -> None:
    """The token for re-authentication comes the way `cvlan-ctrl join` takes it: file, stdin or env."""
    cmd = [sys.executable, "-m", "cvlan.agent", "--state-dir", str(tmp_path), "--token-file"]
    r = subprocess.run([*cmd, str(tmp_path / "missing")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.strip().startswith("cvlan-ctrl: cannot read token file")
    (tmp_path / "two").write_text("cvet_a_b cvet_c_d\n")
    r = subprocess.run([*cmd, str(tmp_path / "two")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "does not hold one enrollment token" in r.stderr


async def test_key_expiry_policy_per_tenant_and_disabled_for_a_server(controller: RunningController) -> None:
    t = await seed_tenant(controller, controller.api(), "acme")
    operator, admin = (controller.api(t.tokens[r]) for r in ("operator", "admin"))
    policy = "/api/v1/tenants/acme/key-expiry"
    assert (await operator.request("PUT", policy, json={"node_cert_lifetime": "1d"})).status == 403
    for bad in ("10m", "400d", "soon"):
        r = await admin.request("PUT", policy, json={"node_cert_lifetime": bad})
        assert r.status == 422 and r.body["error"]["details"]["field"] == "node_cert_lifetime", (bad, r.body)
    assert (await admin.get("/api/v1/tenants/acme")).ok()["node_cert_lifetime_s"] is None
    r = await admin.request("PUT", policy, json={"node_cert_lifetime": "1d"})
    assert r.ok()["node_cert_lifetime_s"] == 86400
    n = await enrol(
        controller, (await admin.post("/api/v1/tenants/acme/tokens", {"cvlan": "acme-lan"})).ok()["token"]
    )
    shown = (await admin.get(f"{NODES}/{n.node_id}")).ok()
    assert 86000 < shown["expires_in_s"] <= 86400 and shown["key_expiry_disabled"] is False
    # A server: expiry disabled by an admin, its next certificate lasts ten years.
    path = f"{NODES}/{n.node_id}/key-expiry"
    assert (await operator.request("PUT", path, json={"disabled": True})).status == 403
    assert (await admin.request("PUT", path, json={"disabled": True})).ok()["key_expiry_disabled"] is True
    got = await n.client.renew(tls.csr_for_key(n.key_pem))
    assert got.certificate_not_after - dt.datetime.now(dt.UTC).timestamp() > 9 * 365 * 86400
    assert (await admin.get(f"{NODES}/{n.node_id}")).ok()["expires_in_s"] > 9 * 365 * 86400
    (entry,) = (await admin.get("/api/v1/tenants/acme/audit?action=node.key_expiry")).ok()["items"]
    assert entry["before"]["key_expiry_disabled"] is False and entry["after"]["key_expiry_disabled"] is True
    (entry,) = (await admin.get("/api/v1/tenants/acme/audit?action=tenant.key_expiry")).ok()["items"]
    assert entry["before"]["node_cert_lifetime_s"] is None and entry["after"]["node_cert_lifetime_s"] == 86400
    assert (await admin.request("PUT", policy, json={"node_cert_lifetime": None})).ok()[
        "node_cert_lifetime_s"
    ] is None
    await n.client.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_certificate_expiring_while_running_is_replaced_by_reauthentication(
    db_url: str, tmp_path: Path
) -> None:
    """The controller was out of reach until the certificate expired: with a token the agent
    re-authenticates in place; without one it asks a tenant admin, and stops with the reason when
    the admin rejects it."""
    clock = FakeClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=8))
    rc = await RunningController(tmp_path / "d", db_url, clock=clock).start()
    try:
        agent = Agent(opts(rc, tmp_path, await make_token(rc)))
        old = await agent.load_or_enrol()
        old_cert = old.cert_pem
        clock.advance(8 * 86400)
        agent.ident = old
        agent.client = NodeApiClient(old.server, old.ca_pem, old.cert_pem, old.tls_key_pem)
        agent.opts.token = None
        asking = asyncio.create_task(agent._renew_if_due())
        await until(lambda: _requests(rc, "pending"))
        (await rc.api().post(f"{NODES}/{old.node_id}/reauth/reject", {})).ok()
        with pytest.raises(FatalError, match="rejected the re-authentication"):
            await asking
        agent.opts.token = await make_token(rc)
        await agent._renew_if_due()
        assert agent.ident.cert_pem != old_cert and agent.ident.node_id == old.node_id
        expiry = agent.metrics.registry.get_sample_value("cvlan_ctrl_certificate_expiry_timestamp_seconds")
        assert expiry == tls.cert_not_after(agent.ident.cert_pem)  # the metric follows the new certificate
        resp = await agent.client.poll(0)  # the client uses the new certificate
        assert resp.map.self.node_id == old.node_id and resp.map.self.address == old.address
        saved = StateStore(tmp_path / "state").load()
        assert saved is not None and saved.cert_pem == agent.ident.cert_pem
        await agent.client.close()
    finally:
        await rc.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cli_disables_tags_and_shows_expires_in(controller: RunningController) -> None:
    n = await enrol(controller, await make_token(controller), "box")
    conf = str(controller.settings.data_dir / "admin.conf")
    cvlan = str(Path(sys.executable).parent / "cvlan")

    def cli(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cvlan, "--config", conf, *a], capture_output=True, text=True, timeout=60)

    for args in (
        ("node", "disable", "--tenant", "acme", "box"),
        ("node", "tag", "--tenant", "acme", "box", "tag:web", "tag:ci"),
        ("node", "key-expiry", "--tenant", "acme", "box", "off"),
        ("tenant", "key-expiry", "--tenant", "acme", "30d"),
    ):
        r = await asyncio.to_thread(cli, *args)
        assert r.returncode == 0, (args, r.stderr)
    r = await asyncio.to_thread(cli, "node", "tag", "--tenant", "acme", "box", "no good")
    assert r.returncode == 1 and "not valid" in r.stderr
    r = await asyncio.to_thread(cli, "node", "list", "--tenant", "acme")
    head, row = r.stdout.splitlines()
    assert "EXPIRES_IN" in head and "DISABLED" in head
    assert "(expiry off)" in row and row.split()[-1] == "yes"
    r = await asyncio.to_thread(cli, "node", "show", "--tenant", "acme", "box")
    assert "      expires_in: 6d 23h (expiry off)\n" in r.stdout, r.stdout
    got = (await controller.api().get(f"{NODES}/box")).ok()
    assert got["tags"] == ["tag:ci", "tag:web"] and got["disabled"] and got["key_expiry_disabled"]
    r = await asyncio.to_thread(cli, "node", "enable", "--tenant", "acme", "box")
    assert r.returncode == 0 and not (await controller.api().get(f"{NODES}/box")).ok()["disabled"]
    # A re-authentication request without a token, listed and approved from the CLI.
    anon = NodeApiClient(controller.url, ca_pem(controller))
    with pytest.raises(ControlError, match="cvlan node reauth --tenant acme approve box"):
        await anon.reauthenticate(
            "", n.wg_private, tls.csr_for_key(n.key_pem), n.reg.certificate_pem, n.key_pem
        )
    r = await asyncio.to_thread(cli, "node", "reauth-requests", "--tenant", "acme")
    head, row = r.stdout.splitlines()
    assert head.split()[:4] == ["NODE_ID", "NODE", "ADDRESS", "STATE"] and row.split()[1:4:2] == [
        "box",
        "pending",
    ]
    r = await asyncio.to_thread(cli, "node", "reauth", "--tenant", "acme", "approve", "box")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "node", "reauth", "--tenant", "acme", "approve", "box")
    assert r.returncode == 1 and "already approved" in r.stderr
    got = await anon.reauthenticate(
        "", n.wg_private, tls.csr_for_key(n.key_pem), n.reg.certificate_pem, n.key_pem
    )
    assert (got.node_id, got.address) == (n.node_id, n.reg.address)
    await anon.close()
    await n.client.close()


async def _requests(rc: RunningController, state: str) -> list[dict[str, object]]:
    items = (await rc.api().get("/api/v1/tenants/acme/reauth-requests")).ok()["items"]
    return [r for r in items if r["state"] == state]


async def test_expired_node_without_a_token_waits_for_an_admin_who_approves_or_rejects(
    db_url: str, tmp_path: Path
) -> None:
    """Re-authentication "or an admin approves it": the node proves it holds its keys and asks without
    a token; the request waits as pending, a tenant admin approves (the node comes back with the same
    id, name and address) or rejects it (refused). A key the node does not hold and another tenant's
    admin are refused; requests, decisions and refusals are audited."""
    clock = FakeClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=8))
    rc = await RunningController(tmp_path / "d", db_url, clock=clock).start()
    try:
        api = rc.api()
        globex = await seed_tenant(rc, api, "globex")
        acme = await seed_tenant(rc, api, "acme")
        token = await make_token(rc, uses=2)
        (tmp_path / "l").mkdir()
        (tmp_path / "k").mkdir()
        old = await Agent(opts(rc, tmp_path / "l", token, hostname="laptop")).load_or_enrol()
        kiosk = await Agent(opts(rc, tmp_path / "k", token, hostname="kiosk")).load_or_enrol()
        clock.advance(8 * 86400)
        peer = await enrol(rc, await make_token(rc), "peer")
        anon = NodeApiClient(rc.url, old.ca_pem)
        priv = bytes.fromhex(old.wg_private_key)
        csr = tls.new_key_and_csr()[1]
        for key, signer in ((priv, tls.new_key_and_csr()[0]), (os.urandom(32), old.tls_key_pem)):
            with pytest.raises(ControlError) as e:  # keys the node does not hold: no request
                await anon.reauthenticate("", key, csr, old.cert_pem, signer)
            assert e.value.reason == "reauth_refused", e.value.message
        assert await _requests(rc, "pending") == []
        refused = (await api.get("/api/v1/tenants/acme/audit?action=node.reauth_refused")).ok()["items"]
        assert [a["actor"] for a in refused] == [f"node:{old.node_id}"] * 2
        # Asking several times, at once, is one request: every attempt is told to wait.
        asks = [anon.reauthenticate("", priv, csr, old.cert_pem, old.tls_key_pem) for _ in range(6)]
        for e in await asyncio.gather(*asks, return_exceptions=True):
            assert isinstance(e, ControlError), e
            assert e.status == 403 and e.reason == "reauth_pending", e.message
            assert "waits for a tenant admin's approval" in e.message
        (req,) = await _requests(rc, "pending")
        assert (req["node_id"], req["node"], req["address"]) == (
            old.node_id,
            "laptop",
            old.address.split("/")[0],
        )
        (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.reauth_requested")).ok()["items"]
        assert entry["target_id"] == str(old.node_id) and entry["actor"] == "node:laptop"

        # Only the node's own tenant's admins decide; elsewhere the node does not exist.
        other = rc.api(globex.tokens["admin"])
        for path in (
            f"{NODES}/{old.node_id}/reauth/approve",
            f"/api/v1/tenants/globex/nodes/{old.node_id}/reauth/approve",
        ):
            assert (await other.post(path, {})).status == 404
        operator = rc.api(acme.tokens["operator"])
        assert (await operator.post(f"{NODES}/laptop/reauth/approve", {})).status == 403
        assert (await api.post(f"{NODES}/peer/reauth/approve", {})).status == 404  # nothing asked
        assert [r["state"] for r in await _requests(rc, "pending")] == ["pending"]

        # Rejected: the node's next attempt is refused (and audited), nothing changes.
        kiosk_client = NodeApiClient(rc.url, kiosk.ca_pem)
        kiosk_priv = bytes.fromhex(kiosk.wg_private_key)
        with pytest.raises(ControlError, match="waits for a tenant admin"):
            await kiosk_client.reauthenticate("", kiosk_priv, csr, kiosk.cert_pem, kiosk.tls_key_pem)
        got = (await rc.api(acme.tokens["admin"]).post(f"{NODES}/kiosk/reauth/reject", {})).ok()
        assert got["state"] == "rejected" and got["decided_by"] and got["decided_at"]
        assert (await api.post(f"{NODES}/kiosk/reauth/approve", {})).status == 409  # decided already
        with pytest.raises(ControlError) as e:
            await kiosk_client.reauthenticate("", kiosk_priv, csr, kiosk.cert_pem, kiosk.tls_key_pem)
        assert e.value.reason == "reauth_refused" and "rejected" in e.value.message
        await kiosk_client.close()
        await anon.close()

        # Approved while the agent waits: it comes back as the same node and reaches its peer.
        cvland = await FakeCvland(tmp_path / "l" / "cvland.sock", ["192.0.2.7:51820"]).start()
        back = Agent(opts(rc, tmp_path / "l", None, ca_pin=None, hostname="laptop"))
        clock.advance(1)
        async with running(back) as task:
            await until(lambda: _attempted_after(rc, clock))
            assert not task.done() and not cvland.applied
            approved = (await api.post(f"{NODES}/laptop/reauth/approve", {})).ok()
            await until(lambda: bool(cvland.applied) and cvland.applied[-1].peers != [])
        st = cvland.applied[-1]
        assert (st.node_id, st.address) == (old.node_id, old.address)
        assert sorted(p.name for p in st.peers) == ["kiosk", "peer"]
        assert [n["id"] for n in await nodes(rc) if n["name"] == "laptop"] == [old.node_id]
        seen = await peer.client.poll(0)
        assert {p.name: list(p.allowed_ips) for p in seen.map.peers}["laptop"] == [old.address]
        assert await _requests(rc, "pending") == [] and await _requests(rc, "approved") == []
        (entry,) = (await api.get("/api/v1/tenants/acme/audit?action=node.reauth")).ok()["items"]
        assert (
            entry["target_id"] == str(old.node_id)
            and entry["after"]["approved_by"] == approved["decided_by"] != ""
        )
        actions = {a["action"] for a in (await api.get("/api/v1/tenants/acme/audit?limit=200")).ok()["items"]}
        assert {"node.reauth_approve", "node.reauth_reject", "node.reauth_refused"} <= actions
        await peer.client.close()
        await cvland.stop()
    finally:
        await rc.stop()


async def test_an_approval_given_while_an_attempt_is_under_way_stands(controller: RunningController) -> None:
    """An attempt checked before the approval is recorded after it (the request is written in its
    own transaction): the approval is not turned back into a pending request."""
    n = await enrol(controller, await make_token(controller), "laptop")
    anon = NodeApiClient(controller.url, ca_pem(controller))

    async def ask() -> pb.RegisterResponse:
        csr = tls.csr_for_key(n.key_pem)
        return await anon.reauthenticate("", n.wg_private, csr, n.reg.certificate_pem, n.key_pem)

    with pytest.raises(ControlError, match="waits for a tenant admin"):
        await ask()
    assert controller.c is not None
    ctx = controller.c.ctx
    async with ctx.tx() as s:
        node = await s.get(Node, n.node_id)
        assert node is not None
        late = reauth_ops.ReauthPending(node, node.cert_serial, "acme")  # checked before the approval
    (await controller.api().post(f"{NODES}/laptop/reauth/approve", {})).ok()
    await reauth_ops.record_pending(ctx, late)
    assert [r["state"] for r in await _requests(controller, "approved")] == ["approved"]
    assert (await ask()).node_id == n.node_id
    assert (await controller.api().get("/api/v1/tenants/acme/audit?action=node.reauth_requested")).ok()[
        "total"
    ] == 1
    await anon.close()
    await n.client.close()


async def _attempted_after(rc: RunningController, clock: FakeClock) -> bool:
    """The waiting agent has asked again since the test's last step (its request is refreshed)."""
    (req,) = await _requests(rc, "pending")
    return dt.datetime.fromisoformat(str(req["last_attempt_at"])) >= clock.now()
