"""The routing rule shared by node maps and vrouter states: regions, hubs, direct or via."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cvlan.controller.vrouting import Hub, direct, hub_for, node_region

EAST, EAST2, WEST = Hub(3, "e", "east"), Hub(9, "e2", "east"), Hub(5, "w", "west")


def test_region_tag_wins_over_home_relay_region() -> None:
    assert node_region(["tag:web", "region:east"], "west") == "east"
    assert node_region(["tag:web"], "west") == "west"
    assert node_region([], "") == ""


def test_hub_is_the_own_regions_lowest_id_vrouter() -> None:
    assert hub_for("east", "mesh", [EAST2, WEST, EAST]) == EAST
    assert hub_for("west", "mesh", [EAST, WEST]) == WEST


def test_mesh_member_without_a_vrouter_in_its_region_has_no_hub() -> None:
    assert hub_for("north", "mesh", [EAST, WEST]) is None
    assert hub_for("", "mesh", [EAST]) is None
    assert hub_for("east", "mesh", []) is None


def test_hub_mode_falls_back_to_the_first_vrouter() -> None:
    assert hub_for("north", "hub", [WEST, EAST]) == EAST
    assert hub_for("", "hub", [WEST]) == WEST
    assert hub_for("", "hub", []) is None


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
        ha, hb = hub_for(ra, mode, hubs), hub_for(rb, mode, hubs)
        assert direct(mode, ra, ha, rb, hb) == direct(mode, rb, hb, ra, ha)
        if not direct(mode, ra, ha, rb, hb):
            assert ha is not None and hb is not None
