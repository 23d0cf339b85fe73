"""Subnet routes and exit nodes through the node API, the management API and the cvlan CLI: what nodes
advertise, approval, refusals, auto-approval rules, primaries, maps and tenant isolation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cvlan.controller.auth import SYSTEM
from cvlan.controller.ops import subnets
from cvlan.controller.ops.context import resolve_tenant
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import Api, RunningController
from tests.harness.nodes import EnrolledNode, enrol, make_token

BIN = Path(sys.executable).parent
LAN = "10.1.0.0/24"
T = "/api/v1/tenants/acme"


async def advertise(n: EnrolledNode, routes: list[str], exit_node: bool = False) -> pb.PollResponse:
    return await n.client.poll(0, route_advert=pb.RouteAdvert(routes=routes, exit_node=exit_node))


async def routes_of(api: Api, query: str = "") -> list[tuple[str, str, str]]:
    items = (await api.get(T + "/routes" + query)).ok()["items"]
    return sorted((r["node"], r["route"], r["state"]) for r in items)


async def wait_routes(api: Api, want: list[tuple[str, str, str]]) -> None:
    """Adverts are stored after the poll is answered: wait (bounded) until they are."""
    got: list[tuple[str, str, str]] = []
    want = sorted(want)
    for _ in range(100):
        got = await routes_of(api)
        if got == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"routes: {got} != {want}")


def peers(m: pb.PollResponse) -> dict[str, tuple[list[str], bool]]:
    return {p.name: (list(p.routes), p.exit_node) for p in m.map.peers}


async def test_routes_are_approved_refused_and_carried_in_maps(controller: RunningController) -> None:
    admin = controller.api()
    token = await make_token(controller, reusable=True, uses=5)
    a, b, c = [await enrol(controller, token, h) for h in ("ra", "rb", "c")]
    await advertise(a, [LAN, "100.64.0.0/28"], exit_node=True)
    await advertise(b, ["10.1.0.0/16"])
    await wait_routes(
        admin,
        [
            ("ra", "0.0.0.0/0", "pending"),
            ("ra", "100.64.0.0/28", "refused"),
            ("ra", LAN, "pending"),
            ("rb", "10.1.0.0/16", "pending"),
        ],
    )
    refused = [r for r in (await admin.get(T + "/routes?node=ra")).ok()["items"] if r["state"] == "refused"]
    assert refused[0]["reason"] == "route 100.64.0.0/28 overlaps the CVLAN subnet 100.64.0.0/24"
    assert peers(await c.client.poll(0)) == {"ra": ([], False), "rb": ([], False)}, "nothing before approval"

    before = await routes_of(admin)
    bad = [
        ({"routes": ["100.64.0.0/28"]}, 422, "is refused: route 100.64.0.0/28 overlaps the CVLAN subnet"),
        ({"routes": ["10.9.0.0/24"]}, 404, "node 'ra' does not advertise route 10.9.0.0/24"),
        ({"routes": ["10.1.0.1/24"]}, 422, "did you mean 10.1.0.0/24?"),
        ({"routes": ["0.0.0.0/0"]}, 422, "offer the node as an exit node instead"),
        ({"routes": []}, 422, "name at least one route, or exit_node"),
        ({"routes": [LAN, "10.9.0.0/24"]}, 404, "does not advertise route 10.9.0.0/24"),  # all or nothing
    ]
    for body, status, message in bad:
        res = await admin.post(T + "/nodes/ra/routes/approve", body)
        assert res.status == status and message in res.body["error"]["message"], (body, res.body)
    op = await admin.post(T + "/apitokens", {"role": "operator", "name": "op"})
    res = await admin.as_token(op.ok()["token"]).post(T + "/nodes/ra/routes/approve", {"routes": [LAN]})
    assert res.status == 403
    assert await routes_of(admin) == before, "refused approvals change nothing"

    ok = (await admin.post(T + "/nodes/ra/routes/approve", {"routes": [LAN], "exit_node": True})).ok()
    assert sorted(ok["changed"]) == ["0.0.0.0/0", LAN]
    clash = await admin.post(T + "/nodes/rb/routes/approve", {"routes": ["10.1.0.0/16"]})
    assert clash.status == 409
    assert clash.body["error"]["message"] == "route 10.1.0.0/16 overlaps 10.1.0.0/24, approved for node ra"
    m = await c.client.poll(0)
    assert peers(m) == {"ra": ([LAN], True), "rb": ([], False)}
    own = await a.client.poll(0)
    assert list(own.map.self.routes) == [LAN] and own.map.self.exit_node

    # The same route on a second node: approved too, one primary, the other standby.
    await advertise(b, [LAN])
    await wait_routes(
        admin,
        [
            ("ra", "0.0.0.0/0", "approved"),
            ("ra", "100.64.0.0/28", "refused"),
            ("ra", LAN, "approved"),
            ("rb", "10.1.0.0/16", "withdrawn"),
            ("rb", LAN, "pending"),
        ],
    )
    (await admin.post(T + "/nodes/rb/routes/approve", {"routes": [LAN]})).ok()
    items = (await admin.get(T + "/routes?cvlan=office&node=rb")).ok()["items"]
    shared = {
        r["node"]: r["primary"] for r in (await admin.get(T + "/routes")).ok()["items"] if r["route"] == LAN
    }
    assert shared == {"ra": True, "rb": False} and [r["route"] for r in items] == ["10.1.0.0/16", LAN]
    assert peers(await c.client.poll(0)) == {"ra": ([LAN], True), "rb": ([LAN], False)}

    # Revoking takes the route out of the maps at once; withdrawing keeps the approval.
    (await admin.post(T + "/nodes/ra/routes/revoke", {"exit_node": True})).ok()
    assert peers(await c.client.poll(0))["ra"] == ([LAN], False)
    await advertise(a, [])
    await wait_routes(
        admin,
        [
            ("ra", "0.0.0.0/0", "withdrawn"),
            ("ra", "100.64.0.0/28", "refused"),
            ("ra", LAN, "withdrawn"),
            ("rb", "10.1.0.0/16", "withdrawn"),
            ("rb", LAN, "approved"),
        ],
    )
    assert peers(await c.client.poll(0)) == {"ra": ([], False), "rb": ([LAN], False)}
    actions = [e["action"] for e in (await admin.get(T + "/audit")).ok()["items"]]
    assert actions.count("route.approve") == 2 and actions.count("route.revoke") == 1


async def test_bad_adverts_are_refused_by_the_node_api(controller: RunningController) -> None:
    token = await make_token(controller)
    a = await enrol(controller, token, "ra")
    for routes, message in (
        (["10.1.0.0/16", "10.1.2.0/24"], "overlap"),
        (["0.0.0.0/0"], "exit node"),
        (["x"], "not an IPv4 network"),
    ):
        try:
            await advertise(a, routes)
        except Exception as e:  # the client raises ControlError with the controller's message
            assert message in str(e), e
        else:
            raise AssertionError(f"advert {routes} accepted")
    assert await routes_of(controller.api()) == []


async def test_auto_approval_rules_and_tenant_isolation(controller: RunningController) -> None:
    admin = controller.api()
    token = await make_token(controller, reusable=True, uses=5)
    a = await enrol(controller, token, "ra")
    await advertise(a, [LAN, "192.168.7.0/24"], exit_node=True)
    await wait_routes(
        admin, [("ra", "0.0.0.0/0", "pending"), ("ra", LAN, "pending"), ("ra", "192.168.7.0/24", "pending")]
    )
    rules = T + "/cvlans/office/route-rules"
    for body, message in (
        ({"kind": "route"}, "a route rule needs a prefix"),
        ({"kind": "route", "prefix": "10.0.0.1/8"}, "did you mean 10.0.0.0/8?"),
        ({"kind": "exit", "prefix": "10.0.0.0/8"}, "an exit rule takes no prefix"),
        ({"kind": "everything"}, "kind"),
    ):
        res = await admin.post(rules, body)
        assert res.status == 422 and message in res.body["error"]["message"], res.body
    assert (await admin.get(rules)).ok()["items"] == []
    added = (await admin.post(rules, {"kind": "route", "prefix": "10.0.0.0/8"})).ok()
    assert added["approved"] == [{"node": "ra", "route": LAN}]
    assert (await admin.post(rules, {"kind": "route", "prefix": "10.0.0.0/8"})).status == 409
    # A node that joins later is approved as it advertises.
    b = await enrol(controller, token, "rb")
    await advertise(b, ["10.2.0.0/24"])
    await wait_routes(
        admin,
        [
            ("ra", "0.0.0.0/0", "pending"),
            ("ra", LAN, "approved"),
            ("ra", "192.168.7.0/24", "pending"),
            ("rb", "10.2.0.0/24", "approved"),
        ],
    )
    audit = [e["action"] for e in (await admin.get(T + "/audit")).ok()["items"]]
    assert "route.auto_approve" in audit and "route_rule.add" in audit
    assert (await admin.delete(rules + f"/{added['id']}")).status == 204

    # Another tenant sees none of it and can change none of it.
    other_token = await make_token(controller, tenant="other", cvlan="lan")
    o = await enrol(controller, other_token, "o1")
    assert peers(await o.client.poll(0)) == {}
    res = await admin.post("/api/v1/tenants/other/apitokens", {"role": "admin", "name": "other admin"})
    other = admin.as_token(res.ok()["token"])
    assert (await other.get(T + "/routes")).status == 404
    assert (await other.post(T + "/nodes/ra/routes/approve", {"routes": [LAN]})).status == 404
    assert (await other.get("/api/v1/tenants/other/routes")).ok()["items"] == []
    res = await other.post("/api/v1/tenants/other/nodes/ra/routes/approve", {"routes": [LAN]})
    assert res.status == 404 and res.body["error"]["message"] == "node 'ra' not found"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


async def test_cli_lists_approves_and_shows_routes(controller: RunningController) -> None:
    admin = controller.api()
    token = await make_token(controller)
    a = await enrol(controller, token, "ra")
    await advertise(a, [LAN], exit_node=True)
    await wait_routes(admin, [("ra", "0.0.0.0/0", "pending"), ("ra", LAN, "pending")])
    conf = str(controller.settings.data_dir / "admin.conf")

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(_run, str(BIN / "cvlan"), "--config", conf, *args)

    r = await cli("route", "approve", "--tenant", "acme", "ra", "10.1.0.3/24")
    assert r.returncode == 1 and "did you mean 10.1.0.0/24?" in r.stderr and r.stdout == ""
    assert await routes_of(admin) == [("ra", "0.0.0.0/0", "pending"), ("ra", LAN, "pending")]
    r = await cli("route", "approve", "--tenant", "acme", "ra", LAN, "--exit-node")
    assert r.returncode == 0, r.stderr
    assert "exit node" in r.stdout and "approved" in r.stdout
    r = await cli("route", "list", "--tenant", "acme", "--json")
    listed: list[dict[str, Any]] = json.loads(r.stdout)
    assert sorted((x["route"], x["state"], x["primary"]) for x in listed) == [
        (LAN, "approved", True),
        ("exit node", "approved", True),
    ]
    r = await cli("node", "show", "--tenant", "acme", "ra")
    assert r.returncode == 0 and f"exit node approved; {LAN} approved" in r.stdout, r.stdout
    r = await cli("route-rule", "add", "--tenant", "acme", "--cvlan", "office", "route", "10.0.0.0/8")
    assert r.returncode == 0, r.stderr
    r = await cli("route-rule", "list", "--tenant", "acme", "--cvlan", "office", "--json")
    assert [(x["kind"], x["prefix"]) for x in json.loads(r.stdout)] == [("route", "10.0.0.0/8")]
    r = await cli("route", "--help")
    assert r.returncode == 0 and "approve" in r.stdout and "revoke" in r.stdout


async def test_an_auto_approval_checks_overlaps_as_an_admin_does(controller: RunningController) -> None:
    """A rule never approves a route an admin could not approve: one overlapping another node's
    approved route stays pending, out of every map."""
    admin = controller.api()
    token = await make_token(controller, reusable=True, uses=3)
    a, b, c = [await enrol(controller, token, h) for h in ("ra", "rb", "c")]
    await advertise(a, [LAN])
    await wait_routes(admin, [("ra", LAN, "pending")])
    (await admin.post(T + "/nodes/ra/routes/approve", {"routes": [LAN]})).ok()
    (await admin.post(T + "/cvlans/office/route-rules", {"kind": "route", "prefix": "10.0.0.0/8"})).ok()
    await advertise(b, ["10.1.0.0/16", "10.2.0.0/24"])
    await wait_routes(
        admin, [("ra", LAN, "approved"), ("rb", "10.1.0.0/16", "pending"), ("rb", "10.2.0.0/24", "approved")]
    )
    assert peers(await c.client.poll(0)) == {"ra": ([LAN], False), "rb": (["10.2.0.0/24"], False)}
    clash = await admin.post(T + "/nodes/rb/routes/approve", {"routes": ["10.1.0.0/16"]})
    assert clash.status == 409, clash.body


async def test_a_moved_node_loses_its_approvals_and_gets_the_new_cvlans_rules(
    controller: RunningController,
) -> None:
    admin = controller.api()
    office = await make_token(controller, reusable=True, uses=2)
    a, c = [await enrol(controller, office, h) for h in ("ra", "c")]
    d = await enrol(controller, await make_token(controller, cvlan="lab"), "d")
    (await admin.post(T + "/cvlans/lab/route-rules", {"kind": "exit"})).ok()
    await advertise(a, [LAN], exit_node=True)
    await wait_routes(admin, [("ra", "0.0.0.0/0", "pending"), ("ra", LAN, "pending")])
    (await admin.post(T + "/nodes/ra/routes/approve", {"routes": [LAN], "exit_node": True})).ok()
    assert peers(await d.client.poll(0)) == {}

    (await admin.patch(T + "/nodes/ra", {"cvlan": "lab"})).ok()
    items = (await admin.get(T + "/routes?node=ra")).ok()["items"]
    assert sorted((r["cvlan"], r["route"], r["state"]) for r in items) == [
        ("lab", "0.0.0.0/0", "approved"),  # by the exit rule of lab
        ("lab", LAN, "pending"),  # approved in office, not in lab
    ]
    assert peers(await d.client.poll(0)) == {"ra": ([], True)}
    assert peers(await c.client.poll(0)) == {}
    own = await a.client.poll(0)
    assert list(own.map.self.routes) == [] and own.map.self.exit_node


async def test_refusals_follow_the_relays(controller: RunningController) -> None:
    """A route covering a relay's address is refused while the relay exists, and not after (and an
    approved route is refused, out of the maps, when such a relay is added)."""
    admin = controller.api()
    token = await make_token(controller, reusable=True, uses=2)
    a, c = [await enrol(controller, token, h) for h in ("ra", "c")]
    (await admin.post("/api/v1/regions", {"name": "east"})).ok()
    relay = {"name": "r1", "region": "east", "url": "https://203.0.113.1:8443"}
    (await admin.post("/api/v1/relays", relay)).ok()
    await advertise(a, ["203.0.113.0/24"])
    await wait_routes(admin, [("ra", "203.0.113.0/24", "refused")])
    assert (await admin.delete("/api/v1/relays/r1")).status == 204
    items = (await admin.get(T + "/routes")).ok()["items"]
    assert [(r["state"], r["reason"]) for r in items] == [("pending", "")]
    (await admin.post(T + "/nodes/ra/routes/approve", {"routes": ["203.0.113.0/24"]})).ok()
    assert peers(await c.client.poll(0)) == {"ra": (["203.0.113.0/24"], False)}
    (await admin.post("/api/v1/relays", relay)).ok()  # back: the approved route is refused again
    items = (await admin.get(T + "/routes")).ok()["items"]
    assert [r["reason"] for r in items] == [
        "route 203.0.113.0/24 covers 203.0.113.1, an address of the controller or a relay"
    ]
    assert peers(await c.client.poll(0)) == {"ra": ([], False)}


async def test_a_cvlan_served_by_vrouters_approves_no_route(controller: RunningController) -> None:
    """Vrouters carry only the CVLAN's own addresses: an approval there is refused (by an admin or
    a rule), and a vrouter is not attached where routes are approved."""
    admin = controller.api()
    a = await enrol(controller, await make_token(controller), "ra")
    (await admin.post("/api/v1/regions", {"name": "east"})).ok()
    vr = {"name": "hub-e", "region": "east", "endpoint": "192.0.2.9:51820"}
    (await admin.post("/api/v1/vrouters", vr)).ok()
    await advertise(a, [LAN], exit_node=True)
    await wait_routes(admin, [("ra", "0.0.0.0/0", "pending"), ("ra", LAN, "pending")])
    (await admin.post(T + "/nodes/ra/routes/approve", {"routes": [LAN]})).ok()
    res = await admin.post(T + "/cvlans/office/vrouters", {"vrouter": "hub-e"})
    assert res.status == 409 and "has approved subnet routes or exit nodes" in res.body["error"]["message"]
    (await admin.post(T + "/nodes/ra/routes/revoke", {"routes": [LAN]})).ok()
    (await admin.post(T + "/cvlans/office/vrouters", {"vrouter": "hub-e"})).ok()
    before = await routes_of(admin)
    res = await admin.post(T + "/nodes/ra/routes/approve", {"exit_node": True})
    assert res.status == 409 and res.body["error"]["message"] == (
        "the exit node offer cannot be approved: CVLAN 'office' is served by vrouters, which carry only"
        " its own addresses (subnet routes and exit nodes need a CVLAN without vrouters)"
    )
    added = (await admin.post(T + "/cvlans/office/route-rules", {"kind": "exit"})).ok()
    assert added["approved"] == [] and await routes_of(admin) == before


async def test_a_controller_started_at_a_new_address_refuses_the_routes_covering_it(
    db_url: str, tmp_path: Path
) -> None:
    """The controller's own address is an input of every refusal: started again under a URL inside
    an approved route, it refuses that route (out of the maps) before it serves anything."""
    rc = await RunningController(tmp_path / "data", db_url).start()
    try:
        admin = rc.api()
        a = await enrol(rc, await make_token(rc), "ra")
        await advertise(a, ["203.0.113.0/24"])
        await wait_routes(admin, [("ra", "203.0.113.0/24", "pending")])
        (await admin.post(T + "/nodes/ra/routes/approve", {"routes": ["203.0.113.0/24"]})).ok()
    finally:
        await rc.stop()
    moved = await RunningController(tmp_path / "data", db_url, public_url="https://203.0.113.1:8443").start()
    try:
        assert moved.c is not None
        async with moved.c.ctx.tx() as s:
            tenant = await resolve_tenant(s, SYSTEM, "acme")
            items = await subnets.list_routes(moved.c.ctx, s, SYSTEM, tenant, None, None)
        assert [(r["state"], r["reason"]) for r in items] == [
            ("refused", "route 203.0.113.0/24 covers 203.0.113.1, an address of the controller or a relay")
        ]
    finally:
        await moved.stop()
