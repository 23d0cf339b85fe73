"""The one HOST:PORT parser: what each caller's options admit and refuse."""

from __future__ import annotations

import pytest

from cvlan.wire.endpoint import is_endpoint, split_hostport


def test_split_hostport_accepts_names_addresses_and_brackets() -> None:
    assert split_hostport("relay.example:443") == ("relay.example", 443)
    assert split_hostport("[2001:db8::1]:3478") == ("2001:db8::1", 3478)
    assert split_hostport("0.0.0.0:0", any_port=True) == ("0.0.0.0", 0)
    assert split_hostport(":8443", default_host="0.0.0.0") == ("0.0.0.0", 8443)


@pytest.mark.parametrize(
    "text", ["nope", "host:", ":443", "host:0", "host:65536", "host:-1", "ho st:443", "host:44 3", "[]:1"]
)
def test_split_hostport_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected HOST:PORT, e.g. 0.0.0.0:443$"):
        split_hostport(text)


def test_the_example_is_the_callers() -> None:
    with pytest.raises(ValueError, match=r"^expected HOST:PORT, e.g. 127.0.0.1:8443$"):
        split_hostport("x", example="127.0.0.1:8443")


def test_is_endpoint_wants_an_address() -> None:
    assert is_endpoint("192.0.2.1:51820") and is_endpoint("[2001:db8::1]:1")
    assert not is_endpoint("relay.example:443") and not is_endpoint("192.0.2.1:0")
