"""Controller settings: defaults < file < environment < flags, validated with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cvlan.controller.settings import load_settings


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('listen = "127.0.0.1:1000"\npool_cidr = "10.0.0.0/8"\ncvlan_prefix = 20\n')
    s = load_settings(f, {})
    assert (s.listen, s.pool_cidr, s.cvlan_prefix, s.poll_interval_s) == (
        "127.0.0.1:1000",
        "10.0.0.0/8",
        20,
        30,
    )
    monkeypatch.setenv("CVLAN_CONTROLLER_LISTEN", "127.0.0.1:2000")
    monkeypatch.setenv("CVLAN_CONTROLLER_POLL_INTERVAL_S", "15")
    s = load_settings(f, {})
    assert (s.listen, s.poll_interval_s, s.cvlan_prefix) == ("127.0.0.1:2000", 15, 20)
    s = load_settings(f, {"listen": "127.0.0.1:3000", "db": None})
    assert s.listen == "127.0.0.1:3000" and s.url == "https://127.0.0.1:3000"


def test_validation_names_the_field(tmp_path: Path) -> None:
    for overrides, field in [
        ({"listen": "x"}, "listen"),
        ({"pool_cidr": "10.0.0.1/8"}, "pool_cidr"),
        ({"pool_cidr": "fd00::/8"}, "pool_cidr"),
        ({"cvlan_prefix": 31}, "cvlan_prefix"),
        ({"log_format": "xml"}, "log_format"),
        ({"trusted_proxies": ["127.0.0.1", "haproxy.local"]}, "trusted_proxies"),
    ]:
        with pytest.raises(ValidationError) as e:
            load_settings(None, overrides)
        assert e.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match="'haproxy.local' is not an IP address or network"):
        load_settings(None, {"trusted_proxies": ["10.0.0.0/8", "haproxy.local"]})
    assert load_settings(None, {"trusted_proxies": ["10.0.0.0/8", "::1"]}).trusted_proxies == [
        "10.0.0.0/8",
        "::1",
    ]
