"""The rules of subnet routes (controller/subnetroutes.py, wire/routes.py), table-driven."""

from __future__ import annotations

import pytest

from cvlan.controller.subnetroutes import (
    Advertiser,
    Approved,
    AutoRule,
    approval_problem,
    auto_approved,
    check_rule,
    conflict,
    primary,
    refusal,
)
from cvlan.wire.routes import RouteError, parse_route, parse_routes

SUBNET, POOL = "100.64.0.0/24", "100.64.0.0/10"
INFRA = ["192.0.2.10", "relay.example.net", "198.51.100.7"]


@pytest.mark.parametrize(
    ("items", "want"),
    [
        (["10.1.0.0/24"], ["10.1.0.0/24"]),
        (["10.2.0.0/16,10.1.0.0/24", " 10.1.0.0/24 "], ["10.1.0.0/24", "10.2.0.0/16"]),
        ([], []),
        (["", ","], []),
    ],
)
def test_routes_are_normalized_sorted_and_deduplicated(items: list[str], want: list[str]) -> None:
    assert parse_routes(items) == want


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["10.1.0.1/24"], "route '10.1.0.1/24': not an IPv4 network (did you mean 10.1.0.0/24?)"),
        (["0.0.0.0/0"], "the default route is not a subnet route; offer the node as an exit node"),
        (["fd00::/64"], "route 'fd00::/64': only IPv4 routes are supported"),
        (["banana"], "route 'banana': not an IPv4 network"),
        (["10.1.0.0/16", "10.1.2.0/24"], "routes 10.1.0.0/16 and 10.1.2.0/24 overlap: advertise one of them"),
        ([f"10.{i}.0.0/16" for i in range(33)], "33 routes: a node advertises at most 32"),
    ],
)
def test_bad_routes_are_refused_with_a_clear_message(items: list[str], message: str) -> None:
    with pytest.raises(RouteError) as e:
        parse_routes(items)
    assert message in str(e.value)


def test_one_route_parses_to_its_network() -> None:
    assert str(parse_route("172.16.0.0/12")) == "172.16.0.0/12"


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("10.1.0.0/24", ""),
        ("0.0.0.0/0", ""),  # the exit offer: refused or not by its own approval, never here
        ("100.64.0.0/25", "route 100.64.0.0/25 overlaps the CVLAN subnet 100.64.0.0/24"),
        ("100.64.0.0/16", "route 100.64.0.0/16 overlaps the CVLAN subnet 100.64.0.0/24"),
        ("100.100.0.0/16", "route 100.100.0.0/16 overlaps the overlay address pool 100.64.0.0/10"),
        ("192.0.2.10/32", "route 192.0.2.10/32 covers 192.0.2.10, an address of the controller or a relay"),
        (
            "198.51.100.0/24",
            "route 198.51.100.0/24 covers 198.51.100.7, an address of the controller or a relay",
        ),
        ("192.0.2.0/31", ""),
        (
            "10.1.0.9/24",
            "route '10.1.0.9/24': not an IPv4 network (did you mean 10.1.0.0/24?): "
            "10.1.0.9/24 has host bits set",
        ),
    ],
)
def test_refusal(prefix: str, why: str) -> None:
    assert refusal(prefix, SUBNET, POOL, INFRA) == why


@pytest.mark.parametrize(
    ("prefix", "node", "approved", "want"),
    [
        ("10.1.0.0/24", "b", [Approved("a", "10.1.0.0/24")], ""),  # the same network: failover pair
        (
            "10.1.0.0/24",
            "b",
            [Approved("a", "10.1.0.0/16")],
            "route 10.1.0.0/24 overlaps 10.1.0.0/16, approved for node a",
        ),
        (
            "10.1.0.0/16",
            "b",
            [Approved("a", "10.1.7.0/24")],
            "route 10.1.0.0/16 overlaps 10.1.7.0/24, approved for node a",
        ),
        (
            "10.1.0.0/24",
            "a",
            [Approved("a", "10.1.0.0/16")],
            "",
        ),  # a node's own routes never overlap on the wire
        ("10.1.0.0/24", "b", [Approved("a", "0.0.0.0/0")], ""),  # an exit node conflicts with nothing
        ("0.0.0.0/0", "b", [Approved("a", "0.0.0.0/0")], ""),
        ("10.2.0.0/24", "b", [Approved("a", "10.1.0.0/24")], ""),
    ],
)
def test_conflict(prefix: str, node: str, approved: list[Approved], want: str) -> None:
    assert conflict(prefix, node, approved) == want


VROUTED = (
    "cannot be approved: CVLAN 'office' is served by vrouters, which carry only its own addresses"
    " (subnet routes and exit nodes need a CVLAN without vrouters)"
)


@pytest.mark.parametrize(
    ("prefix", "approved", "vrouted", "want"),
    [
        ("10.1.0.0/24", [], "", ""),
        ("10.1.0.0/24", [Approved("a", "10.1.0.0/24")], "", ""),  # a failover pair
        (
            "10.1.0.0/24",
            [Approved("a", "10.1.0.0/16")],
            "",
            "route 10.1.0.0/24 overlaps 10.1.0.0/16, approved for node a",
        ),
        ("10.1.0.0/24", [], "office", f"route 10.1.0.0/24 {VROUTED}"),
        ("0.0.0.0/0", [], "office", f"the exit node offer {VROUTED}"),
        ("0.0.0.0/0", [Approved("a", "0.0.0.0/0")], "", ""),
    ],
)
def test_approval_problem_is_the_check_of_admins_and_rules_alike(
    prefix: str, approved: list[Approved], vrouted: str, want: str
) -> None:
    assert approval_problem(prefix, "b", approved, vrouted) == want


RULES = [
    AutoRule("route", "10.0.0.0/8"),
    AutoRule("route", "192.168.0.0/16", "router"),
    AutoRule("exit", "", "exit"),
]


@pytest.mark.parametrize(
    ("prefix", "tags", "want"),
    [
        ("10.1.0.0/24", [], True),
        ("10.0.0.0/8", [], True),
        ("11.0.0.0/8", [], False),
        ("192.168.1.0/24", [], False),
        ("192.168.1.0/24", ["router"], True),
        ("192.168.1.0/24", ["tag:router"], True),
        ("0.0.0.0/0", [], False),
        ("0.0.0.0/0", ["exit"], True),
    ],
)
def test_auto_approval_rules(prefix: str, tags: list[str], want: bool) -> None:
    assert auto_approved(prefix, tags, RULES) is want


def test_no_rules_approve_nothing() -> None:
    assert not auto_approved("10.1.0.0/24", ["router"], [])


@pytest.mark.parametrize(
    ("kind", "prefix", "tag", "want"),
    [
        ("route", "10.0.0.0/8", "", AutoRule("route", "10.0.0.0/8", "")),
        ("exit", "", "gw", AutoRule("exit", "", "gw")),
        ("route", "", "", "a route rule needs a prefix"),
        ("route", "10.0.0.1/8", "", "not an IPv4 network"),
        ("route", "0.0.0.0/0", "", "the default route is not a subnet route"),
        ("exit", "10.0.0.0/8", "", "an exit rule takes no prefix"),
        ("all", "", "", "rule kind 'all': expected route or exit"),
    ],
)
def test_check_rule(kind: str, prefix: str, tag: str, want: AutoRule | str) -> None:
    if isinstance(want, AutoRule):
        assert check_rule(kind, prefix, tag) == want
        return
    with pytest.raises(ValueError) as e:
        check_rule(kind, prefix, tag)
    assert want in str(e.value)


@pytest.mark.parametrize(
    ("advertisers", "want"),
    [
        ([], 0),
        ([Advertiser(5, True)], 5),
        ([Advertiser(7, True), Advertiser(5, True)], 5),
        ([Advertiser(5, False), Advertiser(7, True)], 7),
        ([Advertiser(7, False), Advertiser(5, False)], 5),
    ],
)
def test_primary_is_the_first_online_advertiser_in_node_id_order(
    advertisers: list[Advertiser], want: int
) -> None:
    assert primary(advertisers) == want
