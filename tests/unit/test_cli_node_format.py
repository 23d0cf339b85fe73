"""cvlancli's human-readable bytes, ages and certificate expiry, netcheck's IPv6 line, and its refusal
of a bad netcheck
timeout."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvlan.agent.state import Identity, StateStore
from cvlan.cli.node import _expiry_line, ago, ctrl_facts, human_bytes, ipv6_line, main
from cvlan.client.netcheck import NetReport, StunAnswer


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (3 * 2**40, "3.0 TiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (5, "5s ago"),
        (119, "119s ago"),
        (600, "10m ago"),
        (3 * 3600 + 240, "3h 4m ago"),
        (2 * 86400 + 5 * 3600, "2d 5h ago"),
    ],
)
def test_ago(age: int, text: str) -> None:
    assert ago(1_000_000.0 - age, 1_000_000.0) == text
    assert ago(0.0, 1_000_000.0) == "never"


def test_netcheck_timeout_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["netcheck", "--timeout", "0"]) == 2
    assert capsys.readouterr().err.strip() == "cvlancli: --timeout must be 0.05-10 seconds"


def _net(answers: list[StunAnswer], mapped6: str = "", global6: bool = False) -> NetReport:
    got6 = any(a.family == 6 and a.mapped for a in answers)
    return NetReport(True, True, got6, 4000, "198.51.100.6:4000", "unknown", answers, mapped6, global6)


def test_netcheckipv6_line_tells_answered_from_unanswered_from_not_asked() -> None:
    v4 = StunAnswer("eu", "r1", "relay1.example:3478", "192.0.2.6", "198.51.100.6:4000", 1.0)
    v6 = StunAnswer("eu", "r1", "relay1.example:3478", "2001:db8::6", "[2001:db8:1::2]:4001", 1.2, family=6)
    lost = StunAnswer("eu", "r1", "relay1.example:3478", "2001:db8::6", error="no answer", family=6)
    assert ipv6_line(_net([v4, v6], "[2001:db8:1::2]:4001")) == "yes, [2001:db8:1::2]:4001"
    assert ipv6_line(_net([v4, lost])) == "no (no relay answered over IPv6)"
    assert ipv6_line(_net([v4])) == "no (no relay has an IPv6 STUN address)"
    assert ipv6_line(_net([v4], global6=True)) == (
        "no (no relay has an IPv6 STUN address), global address present"
    )


def _cert(lifetime: dt.timedelta) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + lifetime)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("lifetime", "shown"),
    [
        (dt.timedelta(days=6, hours=23, minutes=30), "(expires in 6d 23h)"),
        (dt.timedelta(hours=5, minutes=10, seconds=30), "(expires in 5h 10m)"),
        (dt.timedelta(hours=-1), "(expired)"),
    ],
)
def test_status_shows_when_the_certificate_expires(
    tmp_path: Path, lifetime: dt.timedelta, shown: str
) -> None:
    """`cvlancli status` says how long the node's certificate has left, not only its date."""
    ident = Identity("", "", "00" * 32, "", _cert(lifetime), 1, "box", "100.64.0.2/32", 1, 1, "lan", "")
    StateStore(tmp_path).save(ident)
    line = _expiry_line(ctrl_facts(tmp_path))
    assert line.endswith(shown) and line.startswith(str(dt.datetime.now(dt.UTC).year)[:2])
