"""The reachability matrix, its ordering, the degradation rules and the health metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from cvlan.controller.health import matrix
from cvlan.controller.health.book import HealthBook
from cvlan.controller.health.matrix import Member


def entry(
    node: int,
    path: str = "direct",
    sent: int = 20,
    answered: int = 20,
    rtt: float | None = 1.5,
    region: str = "",
) -> dict[str, Any]:
    return {
        "node_id": node,
        "path": path,
        "relay_region": region,
        "handshake_age_s": 10,
        "rtt_ms": rtt if answered else None,
        "sent": sent,
        "answered": answered,
        "rx_bytes": 100,
        "tx_bytes": 200,
    }


def test_classify_states() -> None:
    assert matrix.classify(entry(2)) == ("ok", 0.0)
    assert matrix.classify(entry(2, "vrouter")) == ("ok", 0.0)
    assert matrix.classify(entry(2, "relay", region="eu")) == ("relay", 0.0)
    assert matrix.classify(entry(2, answered=16)) == ("lossy", 0.2)
    assert matrix.classify(entry(2, answered=18)) == ("ok", 0.1)  # 10 % is the threshold, not above it
    assert matrix.classify(entry(2, answered=0)) == ("down", 1.0)
    assert matrix.classify(entry(2, "none", sent=0, answered=0)) == ("down", None)
    assert matrix.classify(entry(2, sent=0, answered=0)) == ("unknown", None)


def test_pairs_are_worst_first_and_cover_every_ordered_pair() -> None:
    ms = [
        Member(1, "a", True, (entry(2, "relay", region="eu", rtt=30.0), entry(3))),
        Member(2, "b", True, (entry(1, "relay", region="eu"), entry(3, answered=10))),
        Member(3, "c", True, (entry(1, answered=0),)),
    ]
    ps = matrix.pairs(ms)
    assert len(ps) == 6
    assert [(p.src_name, p.dst_name, p.state) for p in ps] == [
        ("c", "a", "down"),
        ("b", "c", "lossy"),
        ("a", "b", "relay"),
        ("b", "a", "relay"),
        ("a", "c", "ok"),
        ("c", "b", "unknown"),
    ]
    assert ps[2].relay_region == "eu" and ps[2].rtt_ms == 30.0
    assert matrix.summary(ps) == {"down": 1, "lossy": 1, "relay": 2, "ok": 1, "unknown": 1}


def test_offline_reporter_says_nothing() -> None:
    ps = matrix.pairs([Member(1, "a", False, (entry(2),)), Member(2, "b", True, ())])
    assert {p.state for p in ps} == {"unknown"}


def test_unreachable_needs_every_measuring_peer_down() -> None:
    ms = [
        Member(1, "a", True, (entry(3, answered=0),)),
        Member(2, "b", True, (entry(3, "none", sent=0, answered=0),)),
        Member(3, "c", True, ()),
    ]
    assert matrix.unreachable(matrix.pairs(ms)) == {3}
    ms[1] = Member(2, "b", True, (entry(3),))
    assert matrix.unreachable(matrix.pairs(ms)) == set()


def _keyed(es: list[dict[str, Any]], node: int = 1) -> dict[int, matrix.Pair]:
    return {p.dst: p for p in matrix.pairs_of(Member(node, "n", True, tuple(es)))}


def _events(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    return [f"{e.kind}:{e.node_id}>{e.peer_id}" for e in matrix.pair_events(_keyed(before), _keyed(after))]


def _metric(name: str, **labels: str) -> float:
    v = REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_changes_between_two_reports_are_events() -> None:
    relay = entry(2, "relay", region="eu")
    assert _events([], [entry(2)]) == []  # a first report compares with nothing
    assert _events([entry(2)], [relay]) == ["relay_fallback:1>2"]
    assert _events([relay], [relay]) == []
    assert _events([relay], [entry(2, "relay", answered=14, region="eu")]) == ["loss:1>2"]
    lossy = entry(2, "relay", answered=14, region="eu")
    assert _events([lossy], [entry(2)]) == ["direct_again:1>2", "loss_ok:1>2"]
    assert _events([entry(2, sent=0, answered=0)], [relay]) == []  # from unknown: not a change
    assert matrix.pair_events(_keyed([entry(2)]), _keyed([relay]))[0].detail == "relay eu"


def test_a_node_no_peer_reaches_and_its_return_are_events() -> None:
    down = [Member(1, "a", True, (entry(3, answered=0),)), Member(3, "c", True, ())]
    back = [Member(1, "a", True, (entry(3),)), Member(3, "c", True, ())]
    assert matrix.reach_events(set(), matrix.unreachable(matrix.pairs(down))) == [
        matrix.Event("unreachable", 3, 0, "no peer reaches it")
    ]
    was, now = matrix.unreachable(matrix.pairs(down)), matrix.unreachable(matrix.pairs(back))
    kinds = matrix.reach_events(was, now)
    assert [(e.kind, e.node_id) for e in kinds] == [("reachable", 3)]


def test_book_gauges_follow_the_latest_report_of_each_node() -> None:
    book = HealthBook()
    down0, ok0 = _metric("cvlan_health_pairs", state="down"), _metric("cvlan_health_pairs", state="ok")
    loss0 = _metric("cvlan_health_events_total", kind="loss")
    book.report(1, [entry(2), entry(3)], 1000.0)
    book.report(1, [entry(2), entry(3, answered=0)], 1010.0)
    book.count([matrix.Event("loss", 1, 2, "")])
    assert _metric("cvlan_health_pairs", state="ok") == ok0 + 1
    assert _metric("cvlan_health_pairs", state="down") == down0 + 1
    assert _metric("cvlan_health_events_total", kind="loss") == loss0 + 1
    book.forget(1)
    assert _metric("cvlan_health_pairs", state="ok") == ok0
    assert _metric("cvlan_health_pairs", state="down") == down0


def test_book_stops_counting_a_node_that_reports_elsewhere() -> None:
    book = HealthBook()
    down0 = _metric("cvlan_health_pairs", state="down")
    book.report(1, [entry(2, answered=0)], 1000.0)  # its next reports go to another controller
    book.report(7, [entry(8)], 1000.0 + matrix.STALE_S - 1)
    assert _metric("cvlan_health_pairs", state="down") == down0 + 1
    book.report(7, [entry(8)], 1000.0 + matrix.STALE_S + 60)  # expiry runs with a report
    assert _metric("cvlan_health_pairs", state="down") == down0
    book.forget(7)
