"""Input rules that must hold for the whole string: numbers of ASCII digits only, names and other
validated fields never accepted with a trailing newline, durations bounded."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from cvlan.common.durations import MAX_DAYS, parse_duration
from cvlan.common.numbers import INT64_MAX, parse_uint
from cvlan.controller.errors import DomainError
from cvlan.controller.mapper.cache import valid_endpoint
from cvlan.controller.ops.context import check_name
from cvlan.controller.ops.users import check_email
from cvlan.controller.policy.document import parse_document
from cvlan.controller.settings import ControllerSettings
from cvlan.cvland.settings import CvlandSettings
from cvlan.dataplane.firewall import FirewallError, render_ruleset

NON_ASCII_DIGITS = ["²", "٣", "１", "1²", "߁"]


@given(st.text(max_size=30))
@example("²")
@example("٣")
@example("1_000")
@example(" 7")
@example("+7")
@example("9" * 5000)
def test_parse_uint_takes_ascii_digits_only(text: str) -> None:
    got = parse_uint(text)
    if got is None:
        assert not (text.isascii() and text.isdigit()) or len(text) > 40 or int(text) > INT64_MAX
    else:
        assert text.isascii() and text.isdigit() and str(got) == text.lstrip("0").rjust(1, "0")


def test_parse_uint_bounds() -> None:
    assert parse_uint(str(INT64_MAX)) == INT64_MAX
    assert parse_uint(str(INT64_MAX + 1)) is None
    assert parse_uint("564800767201586710577152") is None
    assert parse_uint("1000", 999) is None and parse_uint("999", 999) == 999
    for t in NON_ASCII_DIGITS + ["", "-1", "1.0", "0x1"]:
        assert parse_uint(t) is None, t


@pytest.mark.parametrize("name", ["0\n", "acme\n", "a\n", "web-1\n"])
def test_names_with_a_trailing_newline_are_refused(name: str) -> None:
    with pytest.raises(DomainError, match="is not valid"):
        check_name("tenant", name)


def test_emails_with_a_trailing_newline_are_refused() -> None:
    assert check_email("Ops@Example.com") == "ops@example.com"
    with pytest.raises(DomainError, match="not a valid address"):
        check_email("ops@example.com\n")


@pytest.mark.parametrize(
    "rules",
    [
        [{"src": ["tag:web\n"], "dst": ["*"]}],
        [{"src": ["*\n"], "dst": ["*"]}],
        [{"src": ["*"], "dst": ["node:db"], "proto": "tcp", "ports": ["443\n"]}],
        [{"src": ["*"], "dst": ["*"], "proto": "tcp", "ports": ["٤٤٣"]}],
    ],
)
def test_policy_selectors_and_ports_are_whole_strings(rules: list[dict[str, object]]) -> None:
    with pytest.raises(DomainError):
        parse_document({"rules": rules})


def test_interface_names_and_firewall_ports_are_whole_strings() -> None:
    with pytest.raises(ValidationError):
        CvlandSettings(interface="cvlan0\n")
    with pytest.raises(FirewallError):
        render_ruleset("cvlan0\n", "100.64.0.0/24", [])
    with pytest.raises(FirewallError):
        render_ruleset("cvlan0", "100.64.0.0/24", [{"src": ["*"], "proto": "tcp", "ports": ["٤٤٣"]}])


@pytest.mark.parametrize("port", ["²", "٣", "1²", "443\n"])
def test_settings_and_endpoints_refuse_non_ascii_ports(port: str) -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        ControllerSettings(listen=f"127.0.0.1:{port}")
    assert not valid_endpoint(f"192.0.2.1:{port}")


@pytest.mark.parametrize("text", ["5h\n5h", "٣h", "9999999999w", "36501d", "5300w"])
def test_durations_are_ascii_and_bounded(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_longest_duration_fits_a_datetime() -> None:
    longest = parse_duration(f"{MAX_DAYS}d")
    now = dt.datetime.now(dt.UTC)
    assert (now + longest).year > now.year + 99 and (now - longest).year < now.year - 99


def test_lean_server_refuses_an_absurd_content_length() -> None:
    """A Content-Length that is not a short run of ASCII digits is refused with 400 (wire.httphead),
    as cvlan-front refuses it: never read as a number, never handed on."""
    from cvlan.controller.nodeapi.lean import parse_head
    from cvlan.wire.httphead import HeadError

    head = b"POST /v1/poll HTTP/1.1\r\ncontent-type: application/x-protobuf\r\ncontent-length: "
    assert parse_head(head + b"12") is not None
    for length in (b"9" * 5000, "²".encode(), b"-1", b"1_0"):
        with pytest.raises(HeadError) as e:
            parse_head(head + length)
        assert e.value.status == 400
