"""Small pure pieces: durations, names, credentials, admin.conf, tables, backoff."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cvlan.cli.table import cell
from cvlan.common import adminconf, pki
from cvlan.common.backoff import Backoff
from cvlan.common.durations import parse_duration
from cvlan.controller import credentials
from cvlan.controller.errors import DomainError
from cvlan.controller.ops.context import check_name
from cvlan.controller.ops.registration import load_csr


def test_durations() -> None:
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("24h") == dt.timedelta(days=1)
    assert parse_duration(" 2w ") == dt.timedelta(weeks=2)
    for bad, why in [
        ("", "expected a number"),
        ("10", "expected a number"),
        ("0h", "greater than zero"),
        ("5y", "expected a number"),
        ("-1h", "expected a number"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_duration(bad)


@given(st.text(max_size=80))
@example("0\n")
@example("acme\n")
def test_names_accept_only_safe_labels(name: str) -> None:
    try:
        check_name("x", name)
    except DomainError as e:
        assert e.kind.value == "invalid" and "is not valid" in e.message
        return
    assert 1 <= len(name) <= 63 and name.isascii() and name.isprintable() and not name.isdigit()
    assert " " not in name and "/" not in name


def test_tokens_are_stored_hashed_and_checked_in_constant_time() -> None:
    t = credentials.issue("cvat")
    prefix, secret = credentials.split(t.text, "cvat") or ("", "")
    assert prefix == t.prefix and credentials.check_secret(secret, t.digest)
    assert not credentials.check_secret(secret + "x", t.digest)
    assert t.digest != secret.encode() and len(t.digest) == 32
    assert credentials.split(t.text, "cvet") is None and credentials.split("cvat__x", "cvat") is None


def test_passwords_use_argon2() -> None:
    h = credentials.hash_password("correct horse battery")
    assert h.startswith("$argon2id$")
    assert credentials.check_password("correct horse battery", h)
    assert not credentials.check_password("wrong", h) and not credentials.check_password("x", "garbage")


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


def test_table_cells() -> None:
    assert cell(None) == "-" and cell(True) == "yes" and cell([]) == "-" and cell(["a", "b"]) == "a,b"
    assert cell("2026-11-26T10:43:30.450747Z") == "2026-11-26 10:43:30"


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=1, cap=8, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1 and all(d <= 8 for d in delays) and delays[-1] >= 4
    b.reset()
    assert b.next() <= 1


def test_csrs_for_each_key_type_verify_and_other_types_are_refused() -> None:
    for kind in ("p256", "ed25519"):
        _, pem = pki.new_csr("node", kind)
        assert load_csr(pem).is_signature_valid  # what the controller accepts
    with pytest.raises(ValueError, match="expected p256 or ed25519"):
        pki.new_key("rsa")  # type: ignore[arg-type]
