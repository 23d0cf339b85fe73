"""Policies naming subnet routes as destinations (`route:CIDR`): validation and compilation onto the
nodes that carry the route (their forward chain), table-driven."""

from __future__ import annotations

import pytest

from cvlan.controller.errors import DomainError
from cvlan.controller.policy import MemberRef, compile_for_members
from cvlan.controller.policy.document import parse_document

SUBNET = "100.64.0.0/24"
RA = MemberRef(1, "ra", "100.64.0.1", (), ("10.1.0.0/24",))
RB = MemberRef(2, "rb", "100.64.0.2", ("web",), ())
LAPTOP = MemberRef(3, "laptop", "100.64.0.3", ("staff",), ())
EXIT = MemberRef(4, "exit", "100.64.0.4", (), (), exit_node=True)


@pytest.mark.parametrize(
    ("dst", "want"),
    [
        (["route:10.1.0.0/24"], {1: [{"dst": ["10.1.0.0/24"]}]}),
        (["route:10.1.0.0/28"], {1: [{"dst": ["10.1.0.0/28"]}]}),  # a part of the route
        (["route:10.2.0.0/24"], {}),  # nobody carries it
        (["tag:web", "route:10.1.0.0/24"], {1: [{"dst": ["10.1.0.0/24"]}], 2: [{}]}),
        (["*"], {1: [{}], 2: [{}], 3: [{}]}),  # '*' means the members themselves, not their routes
    ],
)
def test_route_destinations_compile_onto_the_carrying_node(
    dst: list[str], want: dict[int, list[dict[str, list[str]]]]
) -> None:
    doc = parse_document({"rules": [{"src": ["tag:staff"], "dst": dst, "proto": "tcp", "ports": ["22"]}]})
    got = compile_for_members(doc, [RA, RB, LAPTOP], SUBNET)
    for nid, rules in got.items():
        expected = want.get(nid)
        if expected is None:
            assert rules == [{"action": "drop", "src": [SUBNET], "proto": "", "ports": []}]
            continue
        assert [{k: v for k, v in r.items() if k == "dst"} for r in rules] == expected
        assert all(r["src"] == ["100.64.0.3/32"] and r["ports"] == ["22"] for r in rules)


@pytest.mark.parametrize(
    ("dst", "message"),
    [
        ("route:10.1.0.1/24", "expected route:CIDR naming an IPv4 network"),
        ("route:0.0.0.0/0", "the default route is not a subnet route; name exit traffic 'internet'"),
        ("Internet", "or 'internet'"),
        ("route:fd00::/64", "expected route:CIDR naming an IPv4 network"),
        ("10.1.0.0/24", "'route:CIDR' or 'internet'"),
    ],
)
def test_bad_route_destinations_are_refused(dst: str, message: str) -> None:
    with pytest.raises(DomainError) as e:
        parse_document({"rules": [{"src": ["*"], "dst": [dst]}]})
    assert message in e.value.message


@pytest.mark.parametrize(
    ("dst", "want"),
    [
        (["internet"], {4: [{"dst": ["0.0.0.0/0"]}]}),  # only on the exit node
        (["internet", "route:10.1.0.0/24"], {1: [{"dst": ["10.1.0.0/24"]}], 4: [{"dst": ["0.0.0.0/0"]}]}),
        (["internet", "node:exit"], {4: [{}, {"dst": ["0.0.0.0/0"]}]}),  # the node itself and its exit
        (["*"], {1: [{}], 2: [{}], 3: [{}], 4: [{}]}),  # '*' is the members, not the internet
    ],
)
def test_internet_destinations_compile_onto_exit_nodes(
    dst: list[str], want: dict[int, list[dict[str, list[str]]]]
) -> None:
    doc = parse_document({"rules": [{"src": ["tag:staff"], "dst": dst}]})
    got = compile_for_members(doc, [RA, RB, LAPTOP, EXIT], SUBNET)
    for nid, rules in got.items():
        expected = want.get(nid, [])
        if not expected:
            assert rules == [{"action": "drop", "src": [SUBNET], "proto": "", "ports": []}]
            continue
        assert [{k: v for k, v in r.items() if k == "dst"} for r in rules] == expected
        assert all(r["src"] == ["100.64.0.3/32"] for r in rules)


def test_internet_in_a_source_is_refused() -> None:
    with pytest.raises(DomainError) as e:
        parse_document({"rules": [{"src": ["internet"], "dst": ["*"]}]})
    assert e.value.message == (
        "policy rules.0.src: 'internet' is not a selector: expected '*', 'tag:NAME', 'node:NAME'"
        " or an IPv4 CIDR"
    )
