"""The routing rule shared by node maps and vrouter states: regions, hubs, direct or via."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cvlan.controller.vrouting import Hub, direct, hubs_for, node_region

EAST, EAST2, WEST = Hub(3, "e", "east"), Hub(9, "e2", "east"), Hub(5, "w", "west")


def test_region_tag_wins_over_home_relay_region() -> None:
    assert node_region(["tag:web", "region:east"], "west") == "east"
    assert node_region(["tag:web"], "west") == "west"
    assert node_region([], "") == ""


def hub_for(node_id: int, region: str, mode: str, hubs: list[Hub]) -> Hub | None:
    order = hubs_for(node_id, region, mode, hubs)
    return order[0] if order else None


def test_hubs_are_all_vrouters_of_the_own_region_in_a_fixed_order_per_node() -> None:
    for node_id in range(1, 50):
        order = hubs_for(node_id, "east", "mesh", [EAST2, WEST, EAST])
        assert sorted(order, key=lambda h: h.vrouter_id) == [EAST, EAST2]
        assert hubs_for(node_id, "east", "mesh", [EAST, WEST, EAST2]) == order, "input order is irrelevant"
    assert hubs_for(7, "west", "mesh", [EAST, WEST]) == (WEST,)


def test_two_vrouters_of_a_region_share_its_nodes() -> None:
    firsts = [hubs_for(n, "east", "mesh", [EAST, EAST2])[0] for n in range(1, 201)]
    assert 70 <= firsts.count(EAST) <= 130, f"{firsts.count(EAST)} of 200 prefer {EAST.name}"


@given(st.integers(1, 10**9), st.lists(st.integers(1, 1000), min_size=2, max_size=6, unique=True))
def test_removing_a_vrouter_moves_only_the_nodes_that_preferred_it(node_id: int, ids: list[int]) -> None:
    hubs = [Hub(i, f"v{i}", "east") for i in ids]
    order = hubs_for(node_id, "east", "mesh", hubs)
    gone = hubs[0]
    assert hubs_for(node_id, "east", "mesh", hubs[1:]) == tuple(h for h in order if h != gone)


def test_mesh_member_without_a_vrouter_in_its_region_has_no_hub() -> None:
    assert hubs_for(1, "north", "mesh", [EAST, WEST]) == ()
    assert hubs_for(1, "", "mesh", [EAST]) == ()
    assert hubs_for(1, "east", "mesh", []) == ()


def test_hub_mode_falls_back_to_all_vrouters() -> None:
    assert set(hubs_for(1, "north", "hub", [WEST, EAST])) == {EAST, WEST}
    assert hubs_for(1, "", "hub", [WEST]) == (WEST,)
    assert hubs_for(1, "", "hub", []) == ()


def test_direct_within_a_region_via_across_and_always_via_in_hub_mode() -> None:
    assert direct("mesh", "east", EAST, "east", EAST)
    assert not direct("mesh", "east", EAST, "west", WEST)
    assert direct("mesh", "east", EAST, "north", None), "no hub on one side: reach it directly"
    assert not direct("hub", "east", EAST, "east", EAST)


regions = st.sampled_from(["", "east", "west", "north"])
hub_sets = st.lists(st.sampled_from([EAST, EAST2, WEST]), unique=True)


@given(st.sampled_from(["mesh", "hub"]), hub_sets, st.lists(regions, min_size=2, max_size=5))
def test_direct_is_symmetric(mode: str, hubs: list[Hub], member_regions: list[str]) -> None:
    # WireGuard accepts a packet only from the peer its allowed IPs map the source to, so both
    # ends must agree on whether they talk directly.
    for ra, rb in itertools.permutations(member_regions, 2):
        ha, hb = hub_for(1, ra, mode, hubs), hub_for(2, rb, mode, hubs)
        assert direct(mode, ra, ha, rb, hb) == direct(mode, rb, hb, ra, ha)
        if not direct(mode, ra, ha, rb, hb):
            assert ha is not None and hb is not None
