"""DNS names in the map and the DNS API/CLI: names follow renames and deletions, clashing labels get a
suffix, policy hides names, records and forwarders reach the map, bad input is refused with nothing
changed, another tenant sees nothing. About 6 s (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.nodes import enrol, make_token

DNS = "/api/v1/tenants/acme/cvlans/office/dns"
ZONE = "office.acme.cvlan.internal"


def names(m: pb.NetworkMap) -> dict[str, str]:
    """The names that resolve for the map's receiver (what cvland gets), name -> address."""
    allowed = set(m.dns.peer_ids)
    out = {m.self.dns_name: m.self.address}
    out.update({p.dns_name: p.address for p in m.peers if m.dns.all_peers or p.node_id in allowed})
    return out


async def test_names_follow_renames_clashes_deletions_and_policy(controller: RunningController) -> None:
    tok = await make_token(controller, reusable=True)
    a = await enrol(controller, tok, "web_1")
    b = await enrol(controller, tok, "db1")
    api = controller.api()
    m = (await a.client.poll(0)).map
    assert (m.dns.zone, m.dns.resolver) == (ZONE, "100.100.100.100")
    assert names(m) == {f"web-1.{ZONE}": f"{a.reg.address}", f"db1.{ZONE}": f"{b.reg.address}"}
    # A rename to a name whose label clashes: the later node (higher id) gets -<id>, in both maps.
    (await api.request("PATCH", "/api/v1/tenants/acme/nodes/db1", json={"name": "Web-1"})).ok()
    m = (await a.client.poll(0)).map
    assert names(m) == {f"web-1.{ZONE}": a.reg.address, f"web-1-{b.reg.node_id}.{ZONE}": b.reg.address}
    shown = (await api.get(f"/api/v1/tenants/acme/nodes/{b.reg.node_id}")).ok()
    assert shown["dns_name"] == f"web-1-{b.reg.node_id}.{ZONE}"
    # A policy that lets only b reach a: a's resolver no longer knows b's name; b still knows a's.
    doc = {"rules": [{"src": ["node:Web-1"], "dst": ["node:web_1"]}]}
    (await api.request("PUT", "/api/v1/tenants/acme/cvlans/office/policy", json=doc)).ok()
    assert names((await a.client.poll(0)).map) == {f"web-1.{ZONE}": a.reg.address}
    assert f"web-1.{ZONE}" in names((await b.client.poll(0)).map)
    assert (await api.delete("/api/v1/tenants/acme/cvlans/office/policy")).status == 204
    # Deleted: gone from the map.
    assert (await api.delete(f"/api/v1/tenants/acme/nodes/{b.reg.node_id}")).status == 204
    assert names((await a.client.poll(0)).map) == {f"web-1.{ZONE}": a.reg.address}
    await a.client.close()
    await b.client.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_records_and_forwarders_reach_the_map_and_are_audited(controller: RunningController) -> None:
    n = await enrol(controller, await make_token(controller), "box")
    api = controller.api()
    first = await n.client.poll(0)
    rec = (await api.post(DNS + "/records", {"name": "Git", "type": "a", "value": "10.1.0.7"})).ok()
    assert rec == {"id": rec["id"], "name": "git", "type": "A", "value": "10.1.0.7", "ttl": 0}
    (
        await api.post(DNS + "/records", {"name": "www", "type": "CNAME", "value": f"git.{ZONE}", "ttl": 300})
    ).ok()
    fwd = (await api.request("PUT", DNS + "/forwarders/Corp.Example", json={"servers": ["10.1.0.53"]})).ok()
    assert fwd["domain"] == "corp.example"
    m = (await n.client.poll(first.map_version)).map
    assert [(r.name, r.type, r.value, r.ttl) for r in m.dns.records] == [
        ("git", "A", "10.1.0.7", 0),
        ("www", "CNAME", f"git.{ZONE}.", 300),
    ]
    assert [(f.domain, list(f.servers)) for f in m.dns.forwarders] == [("corp.example", ["10.1.0.53"])]
    shown = (await api.get(DNS)).ok()
    assert shown["zone"] == ZONE and len(shown["records"]) == 2
    audit = (await api.get("/api/v1/tenants/acme/audit?action=dns.record.add")).ok()
    assert audit["total"] == 2
    assert (await api.delete(f"{DNS}/records/{rec['id']}")).status == 204
    assert (await api.delete(f"{DNS}/forwarders/corp.example")).status == 204
    m = (await n.client.poll(0)).map
    assert [r.name for r in m.dns.records] == ["www"] and not m.dns.forwarders
    await n.client.close()


BAD = [
    ("POST", "/records", {"name": "git", "type": "A", "value": "10.1.0.300"}, "is not valid A data"),
    ("POST", "/records", {"name": "git", "type": "NS", "value": "ns.example."}, "expected one of A, AAAA"),
    ("POST", "/records", {"name": "bad name!", "type": "A", "value": "10.1.0.7"}, "record name 'bad name!'"),
    ("POST", "/records", {"name": "git", "type": "A", "value": "10.1.0.7", "ttl": -1}, "ttl"),
    ("POST", "/records", {"name": "git", "type": "TXT"}, "value"),
    ("PUT", "/forwarders/corp.example", {"servers": ["not-an-ip"]}, "server 'not-an-ip'"),
    ("PUT", "/forwarders/corp.example", {"servers": []}, "servers"),
    ("PUT", "/forwarders/bad_domain!", {"servers": ["10.1.0.53"]}, "domain 'bad_domain!'"),
    ("PUT", "/forwarders/acme.cvlan.internal", {"servers": ["10.1.0.53"]}, "overlaps the CVLAN's own zone"),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_bad_input_is_refused_and_changes_nothing(controller: RunningController) -> None:
    await make_token(controller)
    api = controller.api()
    (await api.post(DNS + "/records", {"name": "git", "type": "A", "value": "10.1.0.7"})).ok()
    before = (await api.get(DNS)).ok()
    for method, path, body, words in BAD:
        res = await api.request(method, DNS + path, json=body)
        assert res.status == 422, (path, body, res.body)
        assert words in res.body["error"]["message"], res.body
    # A CNAME beside other records, and the same record twice: conflicts.
    for body in (
        {"name": "git", "type": "CNAME", "value": "x.example."},
        {"name": "git", "type": "A", "value": "10.1.0.7"},
    ):
        assert (await api.request("POST", DNS + "/records", json=body)).status == 409
    assert (await api.get(DNS)).ok() == before
    assert (await api.get("/api/v1/tenants/acme/audit?action=dns.record.add")).ok()["total"] == 1
    assert (await api.delete(DNS + "/records/99999")).status == 404
    assert (await api.delete(DNS + "/records/abc")).status == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_another_tenant_sees_and_changes_nothing(controller: RunningController) -> None:
    await make_token(controller)
    await make_token(controller, tenant="other", cvlan="office")
    api = controller.api()
    rec = (await api.post(DNS + "/records", {"name": "git", "type": "A", "value": "10.1.0.7"})).ok()
    tok = (await api.post("/api/v1/tenants/other/apitokens", {"role": "admin"})).ok()["token"]
    theirs = controller.api(tok)
    assert (await theirs.get(DNS)).status == 404
    assert (
        await theirs.request("POST", DNS + "/records", json={"name": "x", "type": "A", "value": "10.0.0.1"})
    ).status == 404
    assert (await theirs.delete(f"{DNS}/records/{rec['id']}")).status == 404
    # Their own CVLAN of the same name: their zone, without acme's record.
    own = (await theirs.get("/api/v1/tenants/other/cvlans/office/dns")).ok()
    assert own["zone"] == "office.other.cvlan.internal" and own["records"] == []
    assert (await theirs.delete(f"/api/v1/tenants/other/cvlans/office/dns/records/{rec['id']}")).status == 404
    assert len((await api.get(DNS)).ok()["records"]) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_cli_manages_records_and_forwarders(controller: RunningController) -> None:
    await make_token(controller)
    conf = str(controller.settings.data_dir / "admin.conf")
    cvlan = str(Path(sys.executable).parent / "cvlan")

    def cli(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cvlan, "--config", conf, "dns", *a, "--tenant", "acme", "--cvlan", "office"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = await asyncio.to_thread(cli, "record-add", "git", "A", "10.1.0.7")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "forward", "corp.example", "10.1.0.53", "10.1.0.54")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "show")
    assert r.stdout.splitlines()[0] == f"zone {ZONE} (resolver 100.100.100.100 on every node)"
    assert (
        "record 1: git A 10.1.0.7" in r.stdout and "forward corp.example -> 10.1.0.53, 10.1.0.54" in r.stdout
    )
    r = await asyncio.to_thread(cli, "record-add", "git", "A", "nope")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "is not valid A data" in r.stderr
    r = await asyncio.to_thread(cli, "record-delete", "1")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "record-list", "--json")
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_no_cvlan_subnet_ever_holds_the_resolver_address(db_url: str, tmp_path: Path) -> None:
    rc = await RunningController(tmp_path / "d", db_url, pool_cidr="100.100.100.0/23").start()
    try:
        api = rc.api()
        await api.post("/api/v1/tenants", {"name": "acme"})
        res = await api.post("/api/v1/tenants/acme/cvlans", {"name": "mine", "subnet": "100.100.100.0/25"})
        assert res.status == 422 and "contains 100.100.100.100" in res.body["error"]["message"]
        # The pool's first block holds it: the first CVLAN gets the next one, and then the pool is full.
        assert (await api.post("/api/v1/tenants/acme/cvlans", {"name": "one"})).ok()[
            "subnet"
        ] == "100.100.101.0/24"
        res = await api.post("/api/v1/tenants/acme/cvlans", {"name": "two"})
        assert res.status == 503 or "no free" in res.body["error"]["message"], res.body
        # The gap walk skips it too.
        assert (await api.delete("/api/v1/tenants/acme/cvlans/one")).status == 204
        (await api.post("/api/v1/tenants/acme/cvlans", {"name": "low", "subnet": "100.100.101.128/25"})).ok()
        res = await api.post("/api/v1/tenants/acme/cvlans", {"name": "three"})
        assert "no free" in res.body["error"]["message"], res.body
    finally:
        await rc.stop()
