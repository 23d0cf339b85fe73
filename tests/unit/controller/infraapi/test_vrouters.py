"""Map contents with two vrouters in a region (pure: maps assembled in memory, no database): every
node gets all its region's vrouters in its own order, and every vrouter serves the whole region."""

from __future__ import annotations

from cvlan.controller.infraapi.vrouters import build_state
from cvlan.controller.mapper.cache import CvlanMap, Mapper, Member
from cvlan.controller.vrouting import Hub, hubs_for
from cvlan.wire.pb import node_pb2 as pb

SUBNET = "100.64.0.0/24"
VROUTERS = [(1, "vr-east-1", "east"), (2, "vr-east-2", "east"), (3, "vr-west", "west")]
MEMBERS = {nid: ("east" if nid <= 8 else "west") for nid in range(1, 11)}


def cvlan_map(mode: str = "mesh") -> CvlanMap:
    mapper = Mapper(ctx=None)  # type: ignore[arg-type]  # only the encoding is used
    vrs = [
        pb.VrouterPeer(
            vrouter_id=i, name=n, region=r, wg_public_key=bytes([i]) * 32, endpoint=f"192.0.2.{i}:51900"
        )
        for i, n, r in VROUTERS
    ]
    for v in vrs:
        v.allowed_ips.append(SUBNET)
    members = {
        nid: Member(
            nid, 1, f"n{nid}", f"100.64.0.{nid}", bytes([100 + nid]) * 32, [], "", True, (f"region:{r}",)
        )
        for nid, r in MEMBERS.items()
    }
    m = CvlanMap(7, 1, "office", SUBNET, mode, 1, 0, members, vrs, mode == "hub")
    for v in vrs:
        m.hubs.append(Hub(v.vrouter_id, v.name, v.region))
        m.hub_parts[v.vrouter_id] = pb.NetworkMap(vrouters=[v]).SerializeToString()
    mapper._retoken(m)
    for mem in members.values():
        mapper._encode_member(m, mem)
    return m


def node_map(m: CvlanMap, nid: int) -> pb.NetworkMap:
    return pb.PollResponse.FromString(m.body_for(nid, pb.PollResponse())).map


def test_each_node_gets_all_vrouters_of_its_region_in_its_own_order() -> None:
    m = cvlan_map()
    firsts = set()
    for nid, region in MEMBERS.items():
        got = node_map(m, nid)
        want = [h.name for h in hubs_for(nid, region, "mesh", m.hubs)]
        assert [v.name for v in got.vrouters] == want
        assert all(list(v.allowed_ips) == [SUBNET] for v in got.vrouters)
        if region == "east":
            assert len(want) == 2
            firsts.add(want[0])
        else:
            assert want == ["vr-west"]
    assert firsts == {"vr-east-1", "vr-east-2"}, "the region's nodes are spread over both vrouters"


def test_every_vrouter_of_a_region_serves_all_its_members_and_knows_their_order() -> None:
    m = cvlan_map()
    for vid, name, region in VROUTERS:
        st = build_state({"id": vid, "name": name, "region": region, "endpoint": ""}, [m])
        members = {x["node_id"]: x for x in st["cvlans"][0]["members"]}
        for nid, r in MEMBERS.items():
            assert members[nid]["served"] == (r == region)
            assert members[nid]["hubs"] == [h.vrouter_id for h in hubs_for(nid, r, "mesh", m.hubs)]
        assert {v["id"] for v in st["vrouters"]} == {1, 2, 3} - {vid}, "every other hub is a peer"


def test_hub_mode_same_region_members_are_reached_through_the_vrouters() -> None:
    m = cvlan_map("hub")
    got = node_map(m, 1)
    assert len(got.vrouters) == 2
    assert all(p.route == pb.PEER_ROUTE_VIA_VROUTER and not p.allowed_ips for p in got.peers)
