"""The vrouter API against a real controller (SQLite and PostgreSQL): registration, the desired state
for two regions, what nodes get in their maps, refusals, and the vrouter's identity on disk."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from cvlan.client.bootstrap import ControllerCallError
from cvlan.client.bootstrap import post_json as post
from cvlan.controller.nodeapi import NODEAPI_KEY
from cvlan.controller.vrouting import Hub, hubs_for
from cvlan.vrouter.identity import Identity, ensure_identity
from cvlan.vrouter.settings import VrouterSettings
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import Api, RunningController
from tests.harness.seed import enrol_node


async def make_vrouter(rc: RunningController, api: Api, name: str, region: str, tmp: Path) -> Identity:
    regions = [r["name"] for r in (await api.get("/api/v1/regions")).ok()["items"]]
    if region not in regions:
        (await api.post("/api/v1/regions", {"name": region})).ok()
    vr = (
        await api.post(
            "/api/v1/vrouters", {"name": name, "region": region, "endpoint": f"192.0.2.{len(name)}:51900"}
        )
    ).ok()
    assert rc.c is not None
    settings = VrouterSettings(
        server=rc.url, token=vr["token"], ca_pin=rc.c.ca.fingerprint, state_dir=tmp / name
    )
    return await ensure_identity(settings)


async def poll(rc: RunningController, ident: Identity, version: str = "") -> Any:
    return await post(
        rc.url + "/v1/vrouter/poll", {"version": version, "long_poll_s": 0}, ident.ssl_context()
    )


@pytest.fixture
async def world(controller: RunningController, tmp_path: Path) -> dict[str, Any]:
    """Tenant acme, mesh CVLAN office served by vr-east and vr-west; e1, e2 in east, w1 in west."""
    api = controller.api()
    east = await make_vrouter(controller, api, "vr-east", "east", tmp_path)
    west = await make_vrouter(controller, api, "vr-west", "west", tmp_path)
    (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
    cv = (await api.post("/api/v1/tenants/acme/cvlans", {"name": "office"})).ok()
    nodes = {}
    for name, region in (("e1", "east"), ("e2", "east"), ("w1", "west")):
        tok = (
            await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "office", "tags": [f"region:{region}"]})
        ).ok()
        nodes[name] = await enrol_node(controller, tok["token"], name)
    for v in ("vr-east", "vr-west"):
        (await api.post("/api/v1/tenants/acme/cvlans/office/vrouters", {"vrouter": v})).ok()
    return {"api": api, "east": east, "west": west, "cvlan": cv, "nodes": nodes}


async def test_desired_state_for_two_regions(controller: RunningController, world: dict[str, Any]) -> None:
    nodes = world["nodes"]
    out = await poll(controller, world["east"])
    assert out["unchanged"] is False and out["version"]
    st = out["state"]
    assert st["vrouter"]["name"] == "vr-east" and st["vrouter"]["region"] == "east"
    [cv] = st["cvlans"]
    assert cv["name"] == "office" and cv["subnet"] == world["cvlan"]["subnet"]
    members = {m["name"]: m for m in cv["members"]}
    assert {n: (m["region"], m["hub"], m["served"]) for n, m in members.items()} == {
        "e1": ("east", "vr-east", True),
        "e2": ("east", "vr-east", True),
        "w1": ("west", "vr-west", False),
    }
    assert members["e1"]["address"] == nodes["e1"]["address"].split("/")[0] + "/32"
    [other] = st["vrouters"]
    assert other["name"] == "vr-west" and other["key"] == str(world["west"].wg_public_key)
    assert other["allowed_ips"] == [members["w1"]["address"]]

    west = (await poll(controller, world["west"]))["state"]
    assert [m["name"] for m in west["cvlans"][0]["members"] if m["served"]] == ["w1"]
    assert west["vrouters"][0]["allowed_ips"] == sorted([members["e1"]["address"], members["e2"]["address"]])

    again = await poll(controller, world["east"], out["version"])
    assert again == {
        "unchanged": True,
        "version": out["version"],
        "poll_interval_s": again["poll_interval_s"],
    }


async def test_node_maps_route_other_regions_through_their_own_vrouter(
    controller: RunningController, world: dict[str, Any]
) -> None:
    assert controller.c is not None
    mapper = controller.c.app[NODEAPI_KEY].mapper
    m = await mapper.get(world["cvlan"]["id"])

    def map_of(name: str) -> pb.NetworkMap:
        body = m.body_for(world["nodes"][name]["id"], pb.PollResponse())
        return pb.PollResponse.FromString(body).map

    e1 = map_of("e1")
    assert [v.name for v in e1.vrouters] == ["vr-east"]
    assert list(e1.vrouters[0].allowed_ips) == [world["cvlan"]["subnet"]]
    peers = {p.name: p for p in e1.peers}
    assert peers["e2"].route == pb.PEER_ROUTE_DIRECT and list(peers["e2"].allowed_ips) == [
        peers["e2"].address
    ]
    assert peers["w1"].route == pb.PEER_ROUTE_VIA_VROUTER and list(peers["w1"].allowed_ips) == []
    w1 = map_of("w1")
    assert [v.name for v in w1.vrouters] == ["vr-west"]
    assert all(p.route == pb.PEER_ROUTE_VIA_VROUTER and not p.allowed_ips for p in w1.peers)


async def test_detach_changes_the_state_and_the_maps(
    controller: RunningController, world: dict[str, Any]
) -> None:
    api = world["api"]
    v1 = (await poll(controller, world["east"]))["version"]
    assert (await api.delete("/api/v1/tenants/acme/cvlans/office/vrouters/vr-west")).status == 204
    out = await poll(controller, world["east"], v1)
    assert out["unchanged"] is False and out["state"]["vrouters"] == []
    w1 = next(m for m in out["state"]["cvlans"][0]["members"] if m["name"] == "w1")
    assert w1["hub"] == "" and w1["served"] is False, "a region without a vrouter is reached directly"
    west = await poll(controller, world["west"])
    assert west["state"]["cvlans"] == []


async def test_refusals_change_nothing(
    controller: RunningController, world: dict[str, Any], tmp_path: Path
) -> None:
    api = world["api"]
    assert controller.c is not None
    ctx = world["east"].ssl_context()
    base = controller.url + "/v1/vrouter/"
    with pytest.raises(ControllerCallError, match="invalid vrouter bootstrap token"):
        await post(
            base + "register", {"token": "cvvb_nope_nope", "wg_public_key": "00" * 32, "csr_pem": "x"}, ctx
        )
    with pytest.raises(ControllerCallError, match="http 422"):
        await post(base + "poll", {"version": 5}, ctx)
    plain = controller.client_ssl()
    with pytest.raises(ControllerCallError, match="needs the vrouter's client certificate"):
        await post(base + "poll", {}, plain)
    vr = (
        await api.post("/api/v1/vrouters", {"name": "vr-x", "region": "east", "endpoint": "192.0.2.99:51900"})
    ).ok()
    with pytest.raises(ControllerCallError, match="wg_public_key: expected 64 hex"):
        await post(base + "register", {"token": vr["token"], "wg_public_key": "zz", "csr_pem": "x"}, plain)
    listed = {v["name"]: v for v in (await api.get("/api/v1/vrouters")).ok()["items"]}
    assert listed["vr-x"]["wg_public_key"] is None, "a refused registration stores nothing"
    # A deleted vrouter's certificate stops working at once, and the CVLANs it served get new maps.
    version = (await api.get("/api/v1/tenants/acme/cvlans/office")).ok()["version"]
    assert (await api.delete("/api/v1/vrouters/vr-west")).status == 204
    assert (await api.get("/api/v1/tenants/acme/cvlans/office")).ok()["version"] == version + 1
    served = (await api.get("/api/v1/tenants/acme/cvlans/office/vrouters")).ok()["items"]
    assert [v["vrouter"] for v in served] == ["vr-east"]
    with pytest.raises(ControllerCallError, match="no longer current"):
        await poll(controller, world["west"])


async def test_identity_is_kept_0600_and_reused_without_token(
    controller: RunningController, world: dict[str, Any], tmp_path: Path
) -> None:
    d = tmp_path / "vr-east"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in ("wg.key", "vrouter.key", "vrouter.crt", "ca.crt", "vrouter.json", "token"):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o600, f
    again = await ensure_identity(VrouterSettings(state_dir=d))
    assert again.wg_public_key == world["east"].wg_public_key and again.server == controller.url
    assert (await poll(controller, again))["state"]["vrouter"]["name"] == "vr-east"
    with pytest.raises(ControllerCallError, match="give --server and --token"):
        await ensure_identity(VrouterSettings(state_dir=tmp_path / "empty"))


async def test_long_poll_answers_when_an_attachment_changes(
    controller: RunningController, world: dict[str, Any]
) -> None:
    ident = world["west"]
    v1 = (await poll(controller, ident))["version"]
    url = controller.url + "/v1/vrouter/poll"
    held = asyncio.ensure_future(
        post(url, {"version": v1, "long_poll_s": 60}, ident.ssl_context(), timeout=90)
    )
    await asyncio.sleep(0.5)
    assert not held.done(), "an unchanged state is held"
    api = world["api"]
    (await api.post("/api/v1/tenants", {"name": "globex"})).ok()
    (await api.post("/api/v1/tenants/globex/cvlans", {"name": "lab", "mode": "hub"})).ok()
    (await api.post("/api/v1/tenants/globex/cvlans/lab/vrouters", {"vrouter": "vr-west"})).ok()
    # Answered on the change, long before the 60 s hold would end.
    out = await asyncio.wait_for(held, 45)
    assert out["unchanged"] is False
    assert sorted(c["name"] for c in out["state"]["cvlans"]) == ["lab", "office"]


async def test_two_vrouters_in_a_region_are_all_in_the_maps_in_each_nodes_order(
    controller: RunningController, world: dict[str, Any], tmp_path: Path
) -> None:
    api = world["api"]
    east2 = await make_vrouter(controller, api, "vr-east-2", "east", tmp_path)
    (await api.post("/api/v1/tenants/acme/cvlans/office/vrouters", {"vrouter": "vr-east-2"})).ok()
    assert controller.c is not None
    m = await controller.c.app[NODEAPI_KEY].mapper.get(world["cvlan"]["id"])
    vrs = {v["name"]: v["id"] for v in (await api.get("/api/v1/vrouters")).ok()["items"]}
    ids = {n: vrs[n] for n in ("vr-east", "vr-east-2")}
    subnet = world["cvlan"]["subnet"]
    for name in ("e1", "e2"):
        nid = world["nodes"][name]["id"]
        nm = pb.PollResponse.FromString(m.body_for(nid, pb.PollResponse())).map
        want = [h.name for h in hubs_for(nid, "east", "mesh", [Hub(i, n, "east") for n, i in ids.items()])]
        assert [v.name for v in nm.vrouters] == want, "both east vrouters, in the node's own order"
        assert all(list(v.allowed_ips) == [subnet] for v in nm.vrouters)
    w1 = pb.PollResponse.FromString(m.body_for(world["nodes"]["w1"]["id"], pb.PollResponse())).map
    assert [v.name for v in w1.vrouters] == ["vr-west"], "another region's vrouters are never a node's peers"

    for ident in (world["east"], east2):
        st = (await poll(controller, ident))["state"]
        members = {x["name"]: x for x in st["cvlans"][0]["members"]}
        assert members["e1"]["served"] and members["e2"]["served"], "either may have to take them over"
        assert not members["w1"]["served"] and members["w1"]["hubs"] == [vrs["vr-west"]]
        assert set(members["e1"]["hubs"]) == set(ids.values())
        assert {v["name"] for v in st["vrouters"]} == {"vr-west", "vr-east", "vr-east-2"} - {ident.name}
    west = (await poll(controller, world["west"]))["state"]
    assert {v["name"] for v in west["vrouters"]} == {"vr-east", "vr-east-2"}, "vr-west must reach both"
