"""admin.conf: written 0600, read back, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvlan.common import adminconf


def test_admin_conf_round_trip(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
    adminconf.write(tmp_path / "admin.conf", "https://h:1", "cvat_a_b", pem)
    assert (tmp_path / "admin.conf").stat().st_mode & 0o777 == 0o600
    assert adminconf.load(tmp_path / "admin.conf") == adminconf.AdminConf("https://h:1", "cvat_a_b", pem)


def test_admin_conf_errors(tmp_path: Path) -> None:
    with pytest.raises(adminconf.AdminConfError, match="^admin.conf line 1: unknown key 'colour'$"):
        adminconf.parse("colour = red\n")
    with pytest.raises(adminconf.AdminConfError, match="^admin.conf line 2: expected 'key = value'$"):
        adminconf.parse("# c\njusttext\n")
    with pytest.raises(adminconf.AdminConfError, match="^admin.conf: missing 'token = ...'$"):
        adminconf.parse("server = https://h:1\n")
    assert adminconf.parse("token = t\n", complete=False) == adminconf.AdminConf("", "t", "")
    with pytest.raises(adminconf.AdminConfError, match="^cannot read .*none.conf: No such file"):
        adminconf.load(tmp_path / "none.conf")
