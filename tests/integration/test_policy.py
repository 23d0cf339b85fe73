"""CVLAN policies: validated documents, compiled per receiving node into the map, denied flows listed."""

from __future__ import annotations

from pathlib import Path

from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.nodes import enrol, make_token

BASE = "/api/v1/tenants/acme/cvlans/office/policy"


def rules(resp: pb.PollResponse) -> list[tuple[str, list[str], str, list[str]]]:
    return [(r.action, sorted(r.src), r.proto, list(r.ports)) for r in resp.map.filter_rules]


async def test_policy_reaches_the_receiving_nodes(controller: RunningController) -> None:
    web_tok = await make_token(controller, tags=["tag:web"])
    db_tok = await make_token(controller, tags=["tag:db"])
    web = await enrol(controller, web_tok, "web1")
    db = await enrol(controller, db_tok, "db1")
    api = controller.api()
    # No policy: nothing to filter (the node allows its CVLAN).
    first = await db.client.poll(0)
    assert rules(first) == []
    assert (await api.get(BASE)).ok()["policy"] is None
    doc = {
        "rules": [
            {
                "src": ["tag:web"],
                "dst": ["tag:db"],
                "proto": "tcp",
                "ports": ["5432"],
                "comment": "web reaches postgres",
            }
        ]
    }
    res = (await api.request("PUT", BASE, json=doc)).ok()
    assert res["changed"] is True
    # The database node gets an accept rule from the web node's address; the web node accepts nothing.
    got = await db.client.poll(first.map_version)
    assert not got.unchanged
    assert rules(got) == [("accept", [f"{web.reg.address}"], "tcp", ["5432"])]
    w = await web.client.poll(0)
    assert rules(w) == [("drop", ["100.64.0.0/24"], "", [])]
    # The same document again changes nothing: no new map version.
    assert (await api.request("PUT", BASE, json=doc)).ok()["changed"] is False
    assert (await db.client.poll(got.map_version)).unchanged
    # The change is audited with before and after.
    entry = (await api.get("/api/v1/tenants/acme/audit?action=policy.set")).ok()["items"]
    assert len(entry) == 1 and entry[0]["after"]["rules"][0]["ports"] == ["5432"]
    # Clearing the policy allows everything again.
    assert (await api.delete(BASE)).status == 204
    assert rules(await db.client.poll(got.map_version)) == []


async def test_bad_policies_are_refused_and_change_nothing(controller: RunningController) -> None:
    await make_token(controller)
    api = controller.api()
    for doc, words in [
        (
            {"rules": [{"src": ["tag:web"], "dst": ["tag:db"], "colour": "red"}]},
            "rules.0.colour: unknown field",
        ),
        ({"rules": [{"src": ["web"], "dst": ["*"]}]}, "is not a selector"),
        ({"rules": [{"src": ["*"], "dst": ["10.0.0.0/8"]}]}, "is not a selector"),
        (
            {"rules": [{"src": ["*"], "dst": ["*"], "proto": "icmp", "ports": ["22"]}]},
            "ports need proto tcp or udp",
        ),
        ({"rules": [{"src": ["*"], "dst": ["*"], "proto": "tcp", "ports": ["70000"]}]}, "port '70000'"),
        ({"rules": [{"src": [], "dst": ["*"]}]}, "rules.0.src"),
        ({"rulez": []}, "rulez: unknown field"),
    ]:
        res = await api.request("PUT", BASE, json=doc)
        assert res.status == 422, res.body
        assert words in res.body["error"]["message"], res.body
    assert (await api.get(BASE)).ok()["policy"] is None
    assert (await api.get("/api/v1/tenants/acme/audit?action=policy.set")).ok()["total"] == 0


async def test_denied_flows_are_listed_per_tenant(controller: RunningController) -> None:
    node = await enrol(controller, await make_token(controller), "h1")
    other = await enrol(controller, await make_token(controller, tenant="other", cvlan="lan"), "h2")
    flow = pb.DeniedFlow(
        src="100.64.0.9", dst=node.reg.address.split("/")[0], proto="tcp", dport=22, packets=3
    )
    await node.client.report([flow])
    await node.client.report(
        [pb.DeniedFlow(src="100.64.0.9", dst=flow.dst, proto="tcp", dport=22, packets=4)]
    )
    await other.client.report(
        [pb.DeniedFlow(src="100.64.1.9", dst="100.64.1.1", proto="udp", dport=53, packets=1)]
    )
    api = controller.api()
    got = (await api.get("/api/v1/tenants/acme/denied")).ok()
    assert got["total"] == 1
    item = got["items"][0]
    assert (item["src"], item["proto"], item["dport"], item["packets"], item["reports"]) == (
        "100.64.0.9",
        "tcp",
        22,
        7,
        2,
    )
    assert (await api.get("/api/v1/tenants/other/denied")).ok()["items"][0]["dport"] == 53
    assert (await api.get("/api/v1/tenants/acme/denied?since=2000-01-01T00:00:00Z")).ok()["total"] == 1


async def test_policy_cli(controller: RunningController, tmp_path: Path) -> None:
    import asyncio
    import json
    import subprocess
    import sys

    await make_token(controller)
    conf = str(controller.settings.data_dir / "admin.conf")
    cvlan = str(Path(sys.executable).parent / "cvlan")
    f = tmp_path / "policy.json"
    f.write_text(json.dumps({"rules": [{"src": ["*"], "dst": ["*"], "proto": "icmp"}]}))

    def cli(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cvlan, "--config", conf, *a], capture_output=True, text=True, timeout=60)

    r = await asyncio.to_thread(cli, "policy", "set", "--tenant", "acme", "--cvlan", "office", str(f))
    assert r.returncode == 0 and "updated" in r.stdout, r.stderr
    r = await asyncio.to_thread(cli, "policy", "show", "--tenant", "acme", "--cvlan", "office")
    assert '"proto": "icmp"' in r.stdout
    f.write_text("{nope")
    r = await asyncio.to_thread(cli, "policy", "set", "--tenant", "acme", "--cvlan", "office", str(f))
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    r = await asyncio.to_thread(cli, "--json", "denied", "list", "--tenant", "acme")
    assert r.returncode == 0 and json.loads(r.stdout) == []
