"""NAT classification from STUN answers (client/netcheck.py)."""

from __future__ import annotations

from cvlan.client.netcheck import StunAnswer, classify_nat


def ans(server_ip: str, mapped: str) -> StunAnswer:
    return StunAnswer("eu", "r", f"{server_ip}:3478", server_ip, mapped, 1.0 if mapped else None)


def test_same_mapping_and_port_is_port_preserving() -> None:
    a = [ans("192.0.2.2", "198.51.100.6:40000"), ans("192.0.2.6", "198.51.100.6:40000")]
    assert classify_nat(40000, ["10.200.1.2"], a) == "port-preserving"


def test_same_mapping_on_another_port_is_endpoint_independent() -> None:
    a = [ans("192.0.2.2", "198.51.100.6:1024"), ans("192.0.2.6", "198.51.100.6:1024")]
    assert classify_nat(40000, ["10.200.1.2"], a) == "endpoint-independent"


def test_mapping_per_destination_is_endpoint_dependent() -> None:
    a = [ans("192.0.2.2", "198.51.100.6:40000"), ans("192.0.2.6", "198.51.100.6:51234")]
    assert classify_nat(40000, ["10.200.1.2"], a) == "endpoint-dependent"


def test_own_address_is_no_nat() -> None:
    a = [ans("192.0.2.2", "192.0.2.10:40000"), ans("192.0.2.6", "192.0.2.10:40000")]
    assert classify_nat(40000, ["192.0.2.10"], a) == "none"


def test_one_server_address_or_silence_is_unknown() -> None:
    same_ip = [
        ans("192.0.2.2", "198.51.100.6:1"),
        StunAnswer("us", "r2", "192.0.2.2:3479", "192.0.2.2", "198.51.100.6:2"),
    ]
    assert classify_nat(40000, [], same_ip) == "unknown"
    assert (
        classify_nat(40000, [], [ans("192.0.2.2", ""), ans("192.0.2.6", "198.51.100.6:40000")]) == "unknown"
    )
