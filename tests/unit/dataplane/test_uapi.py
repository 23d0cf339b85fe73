"""to_uapi: the diff between two WireGuard configs, and the parser of get=1 answers."""

from __future__ import annotations

import pytest

from cvlan.dataplane.uapi import UapiError, parse_get, parse_set_reply, to_uapi
from cvlan.dataplane.wgconfig import WgConfig, WgPeer
from cvlan.wire.endpoint import parse_endpoint
from cvlan.wire.keys import KeyHex, parse_key, public_of

PRIV = KeyHex("a0" * 32)
K1, K2, K3 = KeyHex("11" * 32), KeyHex("22" * 32), KeyHex("33" * 32)


def peer(key: KeyHex, ip: str, ep: str = "", ka: int = 25) -> WgPeer:
    return WgPeer(public_key=key, allowed_ips=(ip,), endpoint=ep, keepalive=ka)


def cfg(*peers: WgPeer, port: int = 51820, priv: KeyHex = PRIV) -> WgConfig:
    return WgConfig(private_key=priv, listen_port=port, peers=peers)


def test_fresh_device_gets_everything_and_keepalive_last() -> None:
    body = to_uapi(cfg(peer(K1, "100.64.0.2/32", "10.0.0.2:51820"), peer(K2, "100.64.0.3/32")), None)
    assert body == (
        "set=1\n"
        f"private_key={PRIV}\nlisten_port=51820\nreplace_peers=true\n"
        f"public_key={K1}\nendpoint=10.0.0.2:51820\nreplace_allowed_ips=true\nallowed_ip=100.64.0.2/32\n"
        f"public_key={K2}\nreplace_allowed_ips=true\nallowed_ip=100.64.0.3/32\n"
        f"public_key={K1}\npersistent_keepalive_interval=25\n"
        f"public_key={K2}\npersistent_keepalive_interval=25\n"
        "\n"
    )


def test_identical_config_is_an_empty_diff() -> None:
    c = cfg(peer(K1, "100.64.0.2/32", "10.0.0.2:51820"))
    assert to_uapi(c, c) == ""


def test_unchanged_peers_are_omitted_and_departed_removed() -> None:
    prev = cfg(peer(K1, "100.64.0.2/32"), peer(K2, "100.64.0.3/32"))
    new = cfg(peer(K1, "100.64.0.2/32"), peer(K3, "100.64.0.4/32"))
    body = to_uapi(new, prev)
    assert K1 not in body
    assert f"public_key={K2}\nremove=true\n" in body
    assert f"public_key={K3}\nreplace_allowed_ips=true\nallowed_ip=100.64.0.4/32\n" in body
    assert "private_key" not in body and "listen_port" not in body and "replace_peers" not in body


def test_allowed_ips_replaced_only_when_changed() -> None:
    a = WgPeer(K1, ("100.64.0.2/32", "10.9.0.0/24"), "", 25)
    reordered = WgPeer(K1, ("10.9.0.0/24", "100.64.0.2/32"), "10.0.0.9:1", 25)
    body = to_uapi(cfg(reordered), cfg(a))
    assert "replace_allowed_ips" not in body
    assert f"public_key={K1}\nendpoint=10.0.0.9:1\n" in body
    changed = WgPeer(K1, ("100.64.0.2/32",), "", 25)
    assert f"public_key={K1}\nreplace_allowed_ips=true\nallowed_ip=100.64.0.2/32\n" in to_uapi(
        cfg(changed), cfg(a)
    )


def test_endpoint_change_rewrites_keepalive_after_it() -> None:
    body = to_uapi(
        cfg(peer(K1, "100.64.0.2/32", "10.0.0.3:51820")), cfg(peer(K1, "100.64.0.2/32", "10.0.0.2:51820"))
    )
    assert body == (
        f"set=1\npublic_key={K1}\nendpoint=10.0.0.3:51820\npublic_key={K1}\npersistent_keepalive_interval=25\n\n"
    )


def test_keepalive_change_alone() -> None:
    body = to_uapi(cfg(peer(K1, "100.64.0.2/32", ka=0)), cfg(peer(K1, "100.64.0.2/32", ka=25)))
    assert body == f"set=1\npublic_key={K1}\npersistent_keepalive_interval=0\n\n"


def test_private_key_and_port_change() -> None:
    new_priv = KeyHex("b0" * 32)
    body = to_uapi(cfg(port=1000, priv=new_priv), cfg())
    assert body == f"set=1\nprivate_key={new_priv}\nlisten_port=1000\n\n"


def test_parse_get() -> None:
    text = (
        f"private_key={PRIV}\nlisten_port=51820\n"
        f"public_key={K1}\nendpoint=10.0.0.2:51820\nlast_handshake_time_sec=1795685511\n"
        "last_handshake_time_nsec=500000000\ntx_bytes=820\nrx_bytes=764\n"
        "persistent_keepalive_interval=25\nallowed_ip=100.64.0.1/32\nprotocol_version=1\n"
        f"public_key={K2}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
        "errno=0\n\n"
    )
    st = parse_get(text)
    assert st.listen_port == 51820 and st.public_key == public_of(PRIV)
    p1 = st.peers[K1]
    assert (p1.endpoint, p1.last_handshake, p1.tx_bytes, p1.rx_bytes) == (
        "10.0.0.2:51820",
        1795685511.5,
        820,
        764,
    )
    assert p1.allowed_ips == ["100.64.0.1/32"] and p1.keepalive == 25
    assert st.peers[K2].last_handshake == 0 and st.peers[K2].endpoint == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen_port=1\nerrno=1\n\n", "get: errno=1"),
        ("listen_port=1\n\n", "get: answer has no errno line"),
        ("junk\nerrno=0\n\n", "get: malformed line 'junk'"),
    ],
)
def test_parse_get_errors(text: str, message: str) -> None:
    with pytest.raises(UapiError, match=f"^{message}$"):
        parse_get(text)


def test_parse_set_reply() -> None:
    parse_set_reply("errno=0\n\n")
    with pytest.raises(UapiError, match="^set: errno=22$"):
        parse_set_reply("errno=22\n\n")
    with pytest.raises(UapiError, match="^set: answer has no errno line$"):
        parse_set_reply("\n")


def test_public_of_matches_rfc7748_vector() -> None:
    # RFC 7748 section 6.1: Alice's private and public key.
    alice = parse_key("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_of(alice) == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def test_parse_key_and_endpoint_errors() -> None:
    assert parse_key("AB" * 32) == "ab" * 32
    with pytest.raises(ValueError, match="^peer: expected 64 hex characters, got 3 characters$"):
        parse_key("abc", "peer")
    assert parse_endpoint("[::1]:5") == "[::1]:5" and parse_endpoint("10.0.0.1:51820") == "10.0.0.1:51820"
    with pytest.raises(ValueError, match="expected IP:PORT"):
        parse_endpoint("10.0.0.1")
    with pytest.raises(ValueError, match="is not an IP address"):
        parse_endpoint("host:1")
